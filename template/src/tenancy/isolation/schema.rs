//! Schema per tenant: tenant `acme`'s tables live in schema `tenant_acme`.
//!
//! A tenant connection gets `search_path="tenant_acme"` in its start-up packet, so every
//! unqualified table name resolves in that tenant's schema and nowhere else, at no cost
//! per request. The schema name only ever comes from `SchemaName::for_tenant`.

use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::migrate::{self, MigrateError, TENANT_MIGRATIONS};
use crate::domain::{SchemaName, Tenant};
use crate::tenancy::with_session_option;

/// Connection settings bound to `tenant`'s schema.
pub fn connect_config(base: &tokio_postgres::Config, tenant: &Tenant) -> tokio_postgres::Config {
    let schema = SchemaName::for_tenant(&tenant.identifier);
    with_session_option(base, "search_path", schema.as_str())
}

/// Creates the tenant's schema if needed and applies its pending migrations. Safe to
/// repeat: this is how an interrupted provisioning completes.
pub async fn migrate(
    base: &tokio_postgres::Config,
    tenant: &Tenant,
) -> Result<Vec<String>, MigrateError> {
    let schema = SchemaName::for_tenant(&tenant.identifier);
    migrate::run_pending(
        connect_config(base, tenant),
        TENANT_MIGRATIONS,
        format!("migrate:{schema}"),
        Some(format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted())),
    )
    .await
}

/// Drops the tenant's schema and everything in it. Runs on a control connection, inside
/// the transaction that also removes the registry row.
pub async fn destroy(conn: &mut AsyncPgConnection, tenant: &Tenant) -> QueryResult<()> {
    let schema = SchemaName::for_tenant(&tenant.identifier);
    diesel::sql_query(format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted()))
        .execute(conn)
        .await?;
    Ok(())
}
