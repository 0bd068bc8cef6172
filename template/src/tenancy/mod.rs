//! Multi-tenancy: the tenant registry, resolving a request's tenant, and scoped access to
//! the tenant's data.
//!
//! The only way to reach tenant tables is a [`TenantConnection`](crate::db::TenantConnection),
//! obtained from [`Tenancy::tenant_connection`] (handlers use the extractor in [`extract`]).

pub mod cache;
pub mod extract;
pub mod isolation;
pub mod lifecycle;
pub mod middleware;
pub mod registry;
pub mod resolve;

use std::str::FromStr;
use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::db::pools::{self, ControlPool};
use crate::db::{ControlConnection, PoolRegistry, PoolStats, TenantConnection, runtime};
use crate::domain::{SqlIdentifier, Tenant, TenantIdentifier, TenantStatus};
use crate::error::AppError;
use cache::TenantCache;

/// The schema of the tenant registry.
pub const CONTROL_SCHEMA: &str = "tenancy";
/// Paths under this prefix are the admin API: authenticated by token, never tenant-scoped.
pub const ADMIN_PREFIX: &str = "/admin/";

/// Everything the service shares between requests, CLI commands and tests.
pub struct Tenancy {
    pub settings: Settings,
    base_config: tokio_postgres::Config,
    /// The role that owns the tables: migrations, provisioning, destroy.
    migration_config: tokio_postgres::Config,
    /// The application role, when it differs from the migration role: it is granted data
    /// access to what the migration role creates.
    app_role: Option<SqlIdentifier>,
    pub control: ControlPool,
    pools: PoolRegistry,
    cache: TenantCache,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("TENANCY_DATABASE_URL: {0}")]
    DatabaseUrl(String),
    #[error("TENANCY_MIGRATION_DATABASE_URL: {0}")]
    MigrationDatabaseUrl(String),
    #[error("could not start the database runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

impl Tenancy {
    pub fn new(settings: Settings) -> Result<Self, StartupError> {
        let runtime = runtime::handle()?;
        let mut base_config =
            tokio_postgres::Config::from_str(settings.database_url.expose_secret())
                .map_err(|e| StartupError::DatabaseUrl(e.to_string()))?;
        if base_config.get_application_name().is_none() {
            base_config.application_name(env!("CARGO_PKG_NAME"));
        }
        let migration_config = match &settings.migration_database_url {
            Some(url) => tokio_postgres::Config::from_str(url.expose_secret())
                .map_err(|e| StartupError::MigrationDatabaseUrl(e.to_string()))?,
            None => base_config.clone(),
        };
        let app_role = match (base_config.get_user(), migration_config.get_user()) {
            (Some(app), Some(owner)) if app != owner => {
                Some(SqlIdentifier::parse(app).map_err(|why| {
                    StartupError::DatabaseUrl(format!(
                        "the user name '{app}' cannot be granted access: {why}"
                    ))
                })?)
            }
            _ => None,
        };
        let control_config = with_session_option(&base_config, "search_path", CONTROL_SCHEMA);
        let control = pools::control_pool(control_config, &settings.database, &runtime);
        let pools = PoolRegistry::new(settings.database.clone(), runtime);
        let cache = TenantCache::new(settings.tenant_cache_ttl);
        Ok(Self {
            settings,
            base_config,
            migration_config,
            app_role,
            control,
            pools,
            cache,
        })
    }

    /// The connection settings of the application role, without any scope.
    pub fn base_config(&self) -> &tokio_postgres::Config {
        &self.base_config
    }

    /// The connection settings of the migration role (the table owner).
    pub fn migration_config(&self) -> &tokio_postgres::Config {
        &self.migration_config
    }

    /// The role granted data access to what migrations create, if not the owner itself.
    pub fn app_role(&self) -> Option<&SqlIdentifier> {
        self.app_role.as_ref()
    }

    /// Refuses an application role that would defeat the isolation strategy (for
    /// Row-Level Security: a superuser, `BYPASSRLS`, or the owner of tenant tables).
    pub async fn check_app_role(&self) -> Result<(), AppError> {
        let mut conn = self.control_connection().await?;
        isolation::check_app_role(&mut conn)
            .await
            .map_err(|why| AppError::Conflict(format!("TENANCY_DATABASE_URL: {why}")))
    }

    /// A connection of the control plane.
    pub async fn control_connection(&self) -> Result<ControlConnection<'_>, AppError> {
        Ok(self.control.get().await?)
    }

    /// A connection scoped to `tenant`, from that tenant's pool.
    pub async fn tenant_connection(&self, tenant: &Tenant) -> Result<TenantConnection, AppError> {
        Ok(self
            .pools
            .get(tenant.id, isolation::connect_target(self, tenant))
            .await?)
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.pools.stats()
    }

    /// Whether tenant resolution is skipped for `path` (`TENANCY_SKIP_PATHS`; a trailing
    /// `*` matches a prefix; the admin API is always skipped).
    pub fn is_skipped(&self, path: &str) -> bool {
        path.starts_with(ADMIN_PREFIX)
            || self
                .settings
                .skip_paths
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => path == pattern,
                })
    }

    /// The active tenant named `identifier`, from the cache or the registry.
    pub async fn active_tenant(
        &self,
        identifier: &TenantIdentifier,
    ) -> Result<Arc<Tenant>, AppError> {
        let tenant = match self.cache.get(identifier) {
            Some(hit) => hit,
            None => {
                let mut conn = self.control_connection().await?;
                let found = registry::find_by_identifier(&mut conn, identifier)
                    .await?
                    .map(Arc::new);
                self.cache.insert(identifier.clone(), found.clone());
                found
            }
        };
        match tenant {
            Some(tenant) if tenant.status == TenantStatus::Active => Ok(tenant),
            Some(tenant) if tenant.status == TenantStatus::Deleted => {
                Err(AppError::TenantNotFound {
                    detail: format!("tenant '{identifier}' is deleted"),
                })
            }
            Some(tenant) => Err(AppError::Forbidden {
                detail: format!("tenant '{identifier}' is {}", tenant.status),
            }),
            None => Err(AppError::TenantNotFound {
                detail: format!("no tenant '{identifier}'"),
            }),
        }
    }

    fn forget(&self, tenant: &Tenant) {
        self.cache.invalidate(&tenant.identifier);
    }
}

/// `base` with `-c name=value` added to its start-up options. `value` must be a safe
/// identifier (a `SchemaName` or a constant).
pub(crate) fn with_session_option(
    base: &tokio_postgres::Config,
    name: &str,
    value: &str,
) -> tokio_postgres::Config {
    let mut config = base.clone();
    let option = format!("-c {name}=\"{value}\"");
    let options = match base.get_options() {
        Some(existing) if !existing.trim().is_empty() => format!("{existing} {option}"),
        _ => option,
    };
    config.options(&options);
    config
}
