//! Shared tables with PostgreSQL Row-Level Security: every tenant table has a
//! `tenant_id` column and a forced policy comparing it with the connection's
//! `app.tenant_id`.
//!
//! Tenants share the pool's connections; a connection serves a tenant once its
//! `search_path` is `"tenancy_data"` and its `app.tenant_id` the tenant's id (both set by
//! the pool in one statement, see `db::pool`). A connection without the setting sees no
//! row and can write none. The application role must not bypass RLS: `check_app_role`
//! refuses superusers, `BYPASSRLS` and table owners.

use diesel::QueryResult;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{Context, DestroyPlan, Pending, RoleCheck, Route, Strategy};
use crate::db::connect::with_session_option;
use crate::db::migrate::{self, MigrateError, grants_on_schema};
use crate::db::pool::{Home, PoolError, SessionScope, set_tenant_locally};
use crate::db::settings::DatabaseSettings;
use crate::db::tls::PgConfig;
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::settings::{ConfigError, Source};

/// The schema of the shared tenant tables.
pub const DATA_SCHEMA: &str = "tenancy_data";
/// Run once, in `tenancy_data`: shared tables, each with its policy.
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant_rls");

pub struct RlsStrategy;

#[derive(diesel::QueryableByName)]
struct TenantTable {
    #[diesel(sql_type = Text)]
    name: String,
}

impl Strategy for RlsStrategy {
    type Settings = ();

    fn read_settings(_: &Source) -> Result<(), ConfigError> {
        Ok(())
    }

    fn new(_: &(), _: &DatabaseSettings) -> Self {
        Self
    }

    fn route(&self, tenant: &Tenant) -> Result<Route, String> {
        super::ensure(tenant, Isolation::Rls)?;
        Ok(Route {
            home: Home::Shared,
            scope: Some(SessionScope {
                tenant: tenant.id,
                search_path: format!("\"{DATA_SCHEMA}\""),
            }),
        })
    }

    async fn connect_config(&self, ctx: &Context, _tenant: &Tenant) -> Result<PgConfig, PoolError> {
        Ok(ctx.app.clone())
    }

    /// Creates or updates the shared tenant tables, as the owner, and grants the
    /// application role data access (never ownership or DDL).
    async fn migrate_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        let schema = format!("\"{DATA_SCHEMA}\"");
        let grants = ctx
            .app_role
            .as_ref()
            .map(|role| grants_on_schema(&schema, role))
            .unwrap_or_default();
        migrate::run_pending(
            &ctx.runtime,
            with_session_option(&ctx.owner, "search_path", DATA_SCHEMA),
            TENANT_MIGRATIONS,
            format!("migrate:{DATA_SCHEMA}"),
            vec![format!("CREATE SCHEMA IF NOT EXISTS {schema}")],
            grants,
        )
        .await
    }

    async fn pending_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        migrate::pending_in_schema(
            &ctx.runtime,
            ctx.owner.clone(),
            &TENANT_MIGRATIONS,
            DATA_SCHEMA,
        )
        .await
    }

    /// A tenant has nothing of its own to migrate.
    async fn pending(
        &self,
        _ctx: &Context,
        tenants: &[Tenant],
    ) -> Result<Vec<Pending>, MigrateError> {
        Ok(vec![Ok(Vec::new()); tenants.len()])
    }

    /// A new tenant needs no storage of its own: its rows go in the shared tables.
    async fn provision(
        &self,
        _ctx: &Context,
        _conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<bool, MigrateError> {
        super::ensure(tenant, Isolation::Rls).map_err(MigrateError::Migration)?;
        Ok(true)
    }

    /// Nothing of a tenant's own to migrate.
    async fn migrate(&self, _ctx: &Context, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
        super::ensure(tenant, Isolation::Rls).map_err(MigrateError::Migration)?;
        Ok(Vec::new())
    }

    /// Deletes the tenant's rows from every tenant table (every table of `tenancy_data`
    /// with a `tenant_id` column), in one transaction, scoped to the tenant as a request
    /// is: its policies let the application role delete those rows and no other. The
    /// explicit `WHERE` matters to a role that RLS does not restrict.
    async fn destroy(
        &self,
        _ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<()> {
        super::ensure(tenant, Isolation::Rls).map_err(super::query_error)?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            diesel::sql_query(set_tenant_locally(tenant.id))
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
                let name = SqlIdentifier::parse(&table.name).map_err(super::query_error)?;
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

    /// Counts the tenant's rows with `app.tenant_id` set, as `destroy` deletes them: a
    /// forced policy applies to a table's owner too.
    async fn destroy_plan(
        &self,
        _ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<DestroyPlan> {
        super::ensure(tenant, Isolation::Rls).map_err(super::query_error)?;
        let tables = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                diesel::sql_query(set_tenant_locally(tenant.id))
                    .execute(conn)
                    .await?;
                super::tables_with_rows(conn, DATA_SCHEMA, true).await
            })
            .await?;
        Ok(DestroyPlan {
            storage: format!("the tenant's rows in the shared tables of \"{DATA_SCHEMA}\""),
            // The shared tables exist; the tenant may have no row in them yet.
            exists: !tables.is_empty(),
            tables,
        })
    }

    /// Refuses an application role that Row-Level Security would not restrict.
    async fn check_app_role(&self, conn: &mut AsyncPgConnection) -> Result<(), String> {
        RoleCheck::of(
            conn,
            "r.rolsuper OR r.rolbypassrls",
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relowner = r.oid",
            DATA_SCHEMA,
        )
        .await?
        .refuse(
            "is a superuser or has BYPASSRLS, so Row-Level Security would not apply",
            "tenant tables and could disable their Row-Level Security",
        )
    }

    fn choose(&self, requested: Option<Isolation>) -> Result<Isolation, String> {
        super::only(requested, Isolation::Rls)
    }
}
