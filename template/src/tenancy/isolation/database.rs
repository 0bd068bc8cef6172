//! One database per tenant: tenant `acme`'s tables live in database `tenant_acme`
//! (`TENANCY_TENANT_DATABASE_PREFIX` + identifier), on the server of
//! `TENANCY_DATABASE_URL_TEMPLATE` (default: the server of `TENANCY_DATABASE_URL`).
//!
//! A tenant connection is a connection to the tenant's database: nothing else can be
//! reached on it. Each tenant has its own small pool; all of them together stay under
//! `TENANCY_MAX_TOTAL_CONNECTIONS` (see `db::pools`). Where each tenant's database lives
//! is recorded in `tenancy.tenant_databases`.

use std::str::FromStr;

use diesel::sql_types::{Bool, Text, Uuid as SqlUuid};
use diesel::{OptionalExtension, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use secrecy::ExposeSecret;

use crate::db::PoolError;
use crate::db::manager::{ConnectTarget, connect};
use crate::db::migrate::{self, MigrateError, grants_on_schema};
use crate::db::runtime;
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::{CONTROL_SCHEMA, Tenancy, with_session_option};

/// Run in every tenant's database (schema `public`), with unqualified table names.
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant_database");
/// The strategy's own control-plane table, `tenancy.tenant_databases`.
pub const CONTROL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/control_database");

/// The name of `tenant`'s database.
pub fn database_name(tenancy: &Tenancy, tenant: &Tenant) -> SqlIdentifier {
    tenancy
        .settings
        .tenant_database_prefix
        .name(&tenant.identifier)
}

/// The application role's connection settings for `tenant`'s database.
pub fn connect_target(tenancy: &Tenancy, tenant: &Tenant) -> Result<ConnectTarget, PoolError> {
    super::ensure(tenant, Isolation::Database).map_err(PoolError::Isolation)?;
    // The template was checked at start-up; `{database}` stands in the database position.
    let mut config = tenancy
        .settings
        .database_url_template
        .as_ref()
        .and_then(|template| {
            tokio_postgres::Config::from_str(
                &template.expose_secret().replace("{database}", "postgres"),
            )
            .ok()
        })
        .unwrap_or_else(|| tenancy.base_config().clone());
    if config.get_application_name().is_none() {
        config.application_name(env!("CARGO_PKG_NAME"));
    }
    config.dbname(database_name(tenancy, tenant).as_str());
    Ok(with_session_option(&config, "search_path", "public").into())
}

/// Creates `tenancy.tenant_databases`.
pub async fn migrate_shared(tenancy: &Tenancy) -> Result<Vec<String>, MigrateError> {
    migrate::run_pending(
        with_session_option(tenancy.migration_config(), "search_path", CONTROL_SCHEMA),
        CONTROL_MIGRATIONS,
        "migrate:control_database".into(),
        Vec::new(),
        Vec::new(),
    )
    .await
}

#[derive(diesel::QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// Creates the tenant's database if needed (as the owner), records it, lets the
/// application role connect to it (and nobody else), then applies the tenant migrations
/// inside it. Safe to repeat: this is how an interrupted provisioning completes.
pub async fn migrate(tenancy: &Tenancy, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
    super::ensure(tenant, Isolation::Database).map_err(MigrateError::Migration)?;
    let name = database_name(tenancy, tenant);
    let runtime = runtime::handle().map_err(|e| MigrateError::Runtime(e.to_string()))?;
    let mut conn = connect(tenancy.migration_config().clone(), &runtime).await?;
    let found: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(name.as_str())
            .get_result(&mut conn)
            .await?;
    if !found.exists {
        // CREATE DATABASE cannot run in a transaction; a concurrent provisioning of the
        // same tenant may win the race, which is fine.
        let created = diesel::sql_query(format!("CREATE DATABASE {}", name.quoted()))
            .execute(&mut conn)
            .await;
        match created {
            Err(error) if !error.to_string().contains("already exists") => return Err(error.into()),
            _ => {}
        }
    }
    diesel::sql_query(
        "INSERT INTO tenancy.tenant_databases (tenant_id, database_name) VALUES ($1, $2) \
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind::<SqlUuid, _>(tenant.id)
    .bind::<Text, _>(name.as_str())
    .execute(&mut conn)
    .await?;
    diesel::sql_query(format!(
        "REVOKE ALL ON DATABASE {} FROM PUBLIC",
        name.quoted()
    ))
    .execute(&mut conn)
    .await?;
    if let Some(role) = tenancy.app_role() {
        diesel::sql_query(format!(
            "GRANT CONNECT ON DATABASE {} TO {}",
            name.quoted(),
            role.quoted()
        ))
        .execute(&mut conn)
        .await?;
    }
    drop(conn);

    let mut owner = tenancy.migration_config().clone();
    owner.dbname(name.as_str());
    let grants = tenancy
        .app_role()
        .map(|role| grants_on_schema("public", role))
        .unwrap_or_default();
    migrate::run_pending(
        with_session_option(&owner, "search_path", "public"),
        TENANT_MIGRATIONS,
        format!("migrate:{}", name.as_str()),
        Vec::new(),
        grants,
    )
    .await
}

#[derive(diesel::QueryableByName)]
struct Recorded {
    #[diesel(sql_type = Text)]
    database_name: String,
}

/// Terminates the tenant's connections and drops its database, as the owner. The name
/// comes from the record written at provisioning (or, without one, from the tenant).
pub async fn destroy(
    tenancy: &Tenancy,
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
) -> QueryResult<()> {
    super::ensure(tenant, Isolation::Database)
        .map_err(|why| diesel::result::Error::QueryBuilderError(why.into()))?;
    let recorded: Option<Recorded> = diesel::sql_query(
        "SELECT database_name FROM tenancy.tenant_databases WHERE tenant_id = $1",
    )
    .bind::<SqlUuid, _>(tenant.id)
    .get_result(conn)
    .await
    .optional()?;
    let name = match recorded {
        Some(recorded) => SqlIdentifier::parse(&recorded.database_name)
            .map_err(|why| diesel::result::Error::QueryBuilderError(why.into()))?,
        None => database_name(tenancy, tenant),
    };
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        name.quoted()
    ))
    .execute(conn)
    .await?;
    diesel::sql_query("DELETE FROM tenancy.tenant_databases WHERE tenant_id = $1")
        .bind::<SqlUuid, _>(tenant.id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Any role that can connect to the tenant databases will do.
pub async fn check_app_role(_conn: &mut AsyncPgConnection) -> Result<(), String> {
    Ok(())
}

/// The isolation of a new tenant: this strategy's; asking for another is an error.
pub fn choose(_tenancy: &Tenancy, requested: Option<Isolation>) -> Result<Isolation, String> {
    super::only(requested, Isolation::Database)
}
