//! Schema per tenant: tenant `acme`'s tables live in schema `tenant_acme`.
//!
//! A tenant connection gets `search_path="tenant_acme"` in its start-up packet, so every
//! unqualified table name resolves in that tenant's schema and nowhere else, at no cost
//! per request. The schema name only ever comes from `SchemaName::for_tenant`.

use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::Refused;
use crate::db::manager::ConnectTarget;
use crate::db::migrate::{self, MigrateError, grants_on_schema};
use crate::domain::{Isolation, SchemaName, Tenant};
use crate::tenancy::{Tenancy, with_session_option};

/// Run once in every tenant's schema, with unqualified table names.
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant_schema");

/// Connection settings bound to `tenant`'s schema.
pub async fn connect_target(tenancy: &Tenancy, tenant: &Tenant) -> Result<ConnectTarget, Refused> {
    super::ensure(tenant, Isolation::Schema).map_err(super::refused)?;
    let schema = SchemaName::for_tenant(&tenant.identifier);
    Ok(with_session_option(tenancy.base_config(), "search_path", schema.as_str()).into())
}

/// Nothing is shared between tenants in this strategy.
pub async fn migrate_shared(_tenancy: &Tenancy) -> Result<Vec<String>, MigrateError> {
    Ok(Vec::new())
}

/// Creates the tenant's schema if needed, applies its pending migrations as the owner and
/// grants the application role data access. Safe to repeat: this is how an interrupted
/// provisioning completes.
pub async fn migrate(tenancy: &Tenancy, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
    super::ensure(tenant, Isolation::Schema).map_err(MigrateError::Migration)?;
    let schema = SchemaName::for_tenant(&tenant.identifier);
    let grants = tenancy
        .app_role()
        .map(|role| grants_on_schema(&schema.quoted(), role))
        .unwrap_or_default();
    migrate::run_pending(
        with_session_option(tenancy.migration_config(), "search_path", schema.as_str()),
        TENANT_MIGRATIONS,
        format!("migrate:{schema}"),
        vec![format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted())],
        grants,
    )
    .await
}

/// Drops the tenant's schema and everything in it (one statement), as the owner.
pub async fn destroy(
    _tenancy: &Tenancy,
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
) -> QueryResult<()> {
    super::ensure(tenant, Isolation::Schema)
        .map_err(|why| diesel::result::Error::QueryBuilderError(why.into()))?;
    let schema = SchemaName::for_tenant(&tenant.identifier);
    diesel::sql_query(format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted()))
        .execute(conn)
        .await?;
    Ok(())
}

/// Any role that can read its tenants' schemas will do.
pub async fn check_app_role(_conn: &mut AsyncPgConnection) -> Result<(), String> {
    Ok(())
}

/// The isolation of a new tenant: this strategy's; asking for another is an error.
pub fn choose(_tenancy: &Tenancy, requested: Option<Isolation>) -> Result<Isolation, String> {
    super::only(requested, Isolation::Schema)
}
