//! Hybrid: each tenant is isolated the way its registry row says, `schema` (its own
//! schema, e.g. premium tenants) or `rls` (shared tables under Row-Level Security, the
//! long tail), chosen at creation (`--isolation`, the admin API's `isolation` field, or
//! `TENANCY_DEFAULT_ISOLATION`). Middleware and handlers do not change: a tenant's pool
//! is opened by the strategy of its tier, so the `TenantConnection` extractor serves both.

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;

use super::{Refused, rls, schema};
use crate::db::manager::ConnectTarget;
use crate::db::migrate::MigrateError;
use crate::domain::{Isolation, Tenant};
use crate::tenancy::Tenancy;

/// The tiers this service offers.
pub const TIERS: [Isolation; 2] = [Isolation::Schema, Isolation::Rls];

/// Connection settings of `tenant`'s tier.
pub async fn connect_target(tenancy: &Tenancy, tenant: &Tenant) -> Result<ConnectTarget, Refused> {
    match tenant.isolation {
        Isolation::Schema => schema::connect_target(tenancy, tenant).await,
        Isolation::Rls => rls::connect_target(tenancy, tenant).await,
        other => Err(super::refused(unsupported(other))),
    }
}

/// The shared tables of the `rls` tier (the `schema` tier shares nothing).
pub async fn migrate_shared(tenancy: &Tenancy) -> Result<Vec<String>, MigrateError> {
    let mut applied = schema::migrate_shared(tenancy).await?;
    applied.extend(rls::migrate_shared(tenancy).await?);
    Ok(applied)
}

/// Provisions or migrates `tenant` in its tier.
pub async fn migrate(tenancy: &Tenancy, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
    match tenant.isolation {
        Isolation::Schema => schema::migrate(tenancy, tenant).await,
        Isolation::Rls => rls::migrate(tenancy, tenant).await,
        other => Err(MigrateError::Migration(unsupported(other))),
    }
}

/// Removes `tenant`'s data from its tier.
pub async fn destroy(
    tenancy: &Tenancy,
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
) -> QueryResult<()> {
    match tenant.isolation {
        Isolation::Schema => schema::destroy(tenancy, conn, tenant).await,
        Isolation::Rls => rls::destroy(tenancy, conn, tenant).await,
        other => Err(diesel::result::Error::QueryBuilderError(
            unsupported(other).into(),
        )),
    }
}

/// The `rls` tier needs a role that Row-Level Security restricts.
pub async fn check_app_role(conn: &mut AsyncPgConnection) -> Result<(), String> {
    schema::check_app_role(conn).await?;
    rls::check_app_role(conn).await
}

/// The tier of a new tenant: the one asked for, or `TENANCY_DEFAULT_ISOLATION`.
pub fn choose(tenancy: &Tenancy, requested: Option<Isolation>) -> Result<Isolation, String> {
    let isolation = requested.unwrap_or(tenancy.settings.default_isolation);
    if TIERS.contains(&isolation) {
        Ok(isolation)
    } else {
        Err(unsupported(isolation))
    }
}

fn unsupported(isolation: Isolation) -> String {
    format!("this service offers the tiers schema and rls, not '{isolation}'")
}
