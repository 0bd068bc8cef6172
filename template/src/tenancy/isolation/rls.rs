//! Shared tables with PostgreSQL Row-Level Security: every tenant table has a
//! `tenant_id` column and a forced policy comparing it with the connection's
//! `app.tenant_id`.
//!
//! A tenant connection is opened with `search_path="tenancy_data"` and gets
//! `set_config('app.tenant_id', <tenant id>, false)` once, when it opens; it then belongs
//! to that tenant's pool for its whole life, so a request costs no extra statement and a
//! tenant id is never left on a connection that serves another tenant. A connection
//! without the setting sees no row and can write none. The application role must not
//! bypass RLS: [`check_app_role`] refuses superusers, `BYPASSRLS` and table owners.

use diesel::QueryResult;
use diesel::sql_types::{BigInt, Bool, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::Refused;
use crate::db::manager::{ConnectTarget, SessionVariable};
use crate::db::migrate::{self, MigrateError, grants_on_schema};
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::{Tenancy, with_session_option};

/// The schema of the shared tenant tables.
pub const DATA_SCHEMA: &str = "tenancy_data";
/// The setting the policies read.
pub const TENANT_SETTING: &str = "app.tenant_id";
/// Run once, in `tenancy_data`: shared tables, each with its policy.
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant_rls");

/// Connection settings bound to `tenant`: the shared schema, and the tenant's id.
pub async fn connect_target(tenancy: &Tenancy, tenant: &Tenant) -> Result<ConnectTarget, Refused> {
    super::ensure(tenant, Isolation::Rls).map_err(super::refused)?;
    Ok(ConnectTarget {
        config: with_session_option(tenancy.base_config(), "search_path", DATA_SCHEMA),
        session: Some(SessionVariable {
            name: TENANT_SETTING,
            value: tenant.id.to_string(),
        }),
    })
}

/// Creates or updates the shared tenant tables, as the owner, and grants the application
/// role data access (never ownership or DDL).
pub async fn migrate_shared(tenancy: &Tenancy) -> Result<Vec<String>, MigrateError> {
    let schema = format!("\"{DATA_SCHEMA}\"");
    let grants = tenancy
        .app_role()
        .map(|role| grants_on_schema(&schema, role))
        .unwrap_or_default();
    migrate::run_pending(
        with_session_option(tenancy.migration_config(), "search_path", DATA_SCHEMA),
        TENANT_MIGRATIONS,
        format!("migrate:{DATA_SCHEMA}"),
        vec![format!("CREATE SCHEMA IF NOT EXISTS {schema}")],
        grants,
    )
    .await
}

/// A new tenant needs no storage of its own: its rows go in the shared tables.
pub async fn migrate(_tenancy: &Tenancy, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
    super::ensure(tenant, Isolation::Rls).map_err(MigrateError::Migration)?;
    Ok(Vec::new())
}

#[derive(diesel::QueryableByName)]
struct TenantTable {
    #[diesel(sql_type = Text)]
    name: String,
}

/// Deletes the tenant's rows from every tenant table (every table of `tenancy_data` with
/// a `tenant_id` column), in one transaction, as the owner. The explicit `WHERE` matters:
/// the owner may be a superuser, which RLS does not restrict.
pub async fn destroy(
    _tenancy: &Tenancy,
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
) -> QueryResult<()> {
    super::ensure(tenant, Isolation::Rls)
        .map_err(|why| diesel::result::Error::QueryBuilderError(why.into()))?;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::sql_query("SELECT set_config($1, $2, true)")
            .bind::<Text, _>(TENANT_SETTING)
            .bind::<Text, _>(tenant.id.to_string())
            .execute(conn)
            .await?;
        let tables: Vec<TenantTable> = diesel::sql_query(
            "SELECT c.relname AS name FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') \
               AND a.attname = 'tenant_id' AND NOT a.attisdropped \
             ORDER BY c.relname",
        )
        .bind::<Text, _>(DATA_SCHEMA)
        .load(conn)
        .await?;
        for table in tables {
            let name = SqlIdentifier::parse(&table.name)
                .map_err(|why| diesel::result::Error::QueryBuilderError(why.into()))?;
            diesel::sql_query(format!(
                "DELETE FROM \"{DATA_SCHEMA}\".{} WHERE tenant_id = $1",
                name.quoted()
            ))
            .bind::<SqlUuid, _>(tenant.id)
            .execute(conn)
            .await?;
        }
        Ok(())
    })
    .await
}

#[derive(diesel::QueryableByName)]
struct RoleCheck {
    #[diesel(sql_type = Text)]
    role: String,
    #[diesel(sql_type = Bool)]
    bypasses: bool,
    #[diesel(sql_type = BigInt)]
    owned_tables: i64,
}

/// Refuses an application role that Row-Level Security would not restrict.
pub async fn check_app_role(conn: &mut AsyncPgConnection) -> Result<(), String> {
    let check: RoleCheck = diesel::sql_query(
        "SELECT r.rolname::text AS role, (r.rolsuper OR r.rolbypassrls) AS bypasses, \
           (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relowner = r.oid) AS owned_tables \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .bind::<Text, _>(DATA_SCHEMA)
    .get_result(conn)
    .await
    .map_err(|e| format!("could not check the application role: {e}"))?;
    if check.bypasses {
        return Err(format!(
            "role '{}' is a superuser or has BYPASSRLS, so Row-Level Security would not apply: \
             connect as a role without them and run migrations as the owner \
             (TENANCY_MIGRATION_DATABASE_URL)",
            check.role
        ));
    }
    if check.owned_tables > 0 {
        return Err(format!(
            "role '{}' owns tenant tables and could disable their Row-Level Security: \
             run migrations as another role (TENANCY_MIGRATION_DATABASE_URL)",
            check.role
        ));
    }
    Ok(())
}

/// The isolation of a new tenant: this strategy's; asking for another is an error.
pub fn choose(_tenancy: &Tenancy, requested: Option<Isolation>) -> Result<Isolation, String> {
    super::only(requested, Isolation::Rls)
}
