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
use std::time::Duration;

use actix_web::{HttpRequest, web};
use secrecy::ExposeSecret;

use crate::config::{DatabaseSettings, Settings};
use crate::db::pool::{Home, Pool, PoolError, PoolSettings, PoolStats};
use crate::db::{ControlConnection, ControlPool, TenantConnection, runtime};
use crate::domain::{SqlIdentifier, Tenant, TenantIdentifier, TenantStatus};
use crate::error::AppError;
use cache::TenantCache;
use isolation::{Context, Strategy};

/// The schema of the tenant registry.
pub const CONTROL_SCHEMA: &str = "tenancy";
/// After PostgreSQL refused a connection for lack of slots, pools hold the connections
/// they have for this long before they try to grow again.
const TOO_MANY_CONNECTIONS_BACKOFF: Duration = Duration::from_secs(2);

/// Everything the service shares between requests, CLI commands and tests.
pub struct Tenancy {
    pub settings: Settings,
    /// What the isolation strategy may use: roles, runtime, control pool.
    ctx: Context,
    strategy: isolation::Selected,
    /// The connections tenants share.
    pool: Pool,
    pub control: ControlPool,
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

/// What `/health` shows about connections.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionStats {
    pub tenant: PoolStats,
    pub control: PoolStats,
    /// Why the service runs with fewer connections than configured, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// Why the service will not serve tenants with its application role (a start-up check).
#[derive(Debug, thiserror::Error)]
pub enum AppRoleError {
    /// The role would defeat the isolation strategy.
    #[error("TENANCY_DATABASE_URL: {0}")]
    Unsafe(String),
    #[error("could not check the application role of TENANCY_DATABASE_URL: {0}")]
    Unchecked(#[from] PoolError),
}

impl Tenancy {
    pub fn new(settings: Settings) -> Result<Self, StartupError> {
        let runtime = runtime::handle()?;
        let database = &settings.database;
        let mut app = tokio_postgres::Config::from_str(settings.database_url.expose_secret())
            .map_err(|e| StartupError::DatabaseUrl(e.to_string()))?;
        if app.get_application_name().is_none() {
            app.application_name(env!("CARGO_PKG_NAME"));
        }
        if app.get_connect_timeout().is_none() {
            app.connect_timeout(database.pool_timeout);
        }
        let app = with_statement_timeout(&app, database.statement_timeout);
        let owner = match &settings.migration_database_url {
            Some(url) => tokio_postgres::Config::from_str(url.expose_secret())
                .map_err(|e| StartupError::MigrationDatabaseUrl(e.to_string()))?,
            None => tokio_postgres::Config::from_str(settings.database_url.expose_secret())
                .map_err(|e| StartupError::DatabaseUrl(e.to_string()))?,
        };
        let app_role = match (app.get_user(), owner.get_user()) {
            (Some(app), Some(owner)) if app != owner => {
                Some(SqlIdentifier::parse(app).map_err(|why| {
                    StartupError::DatabaseUrl(format!(
                        "the user name '{app}' cannot be granted access: {why}"
                    ))
                })?)
            }
            _ => None,
        };
        let control = ControlPool::new(
            Pool::new(
                "control",
                pool_settings(
                    database,
                    database.control_pool_size,
                    database.control_pool_size,
                ),
                runtime.clone(),
            ),
            with_session_option(&app, "search_path", CONTROL_SCHEMA),
        );
        let pool = Pool::new(
            "tenant",
            pool_settings(
                database,
                database.max_total_connections,
                database.per_tenant_max(),
            ),
            runtime.clone(),
        );
        let strategy = isolation::Selected::new(&settings);
        let cache = TenantCache::new(settings.tenant_cache_ttl);
        Ok(Self {
            settings,
            ctx: Context {
                app,
                owner,
                app_role,
                runtime,
                control: control.clone(),
            },
            strategy,
            pool,
            control,
            cache,
        })
    }

    /// What the isolation strategy uses (roles, runtime, control pool).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The service's `Tenancy`, registered as app data by `startup::app`.
    pub fn of(req: &HttpRequest) -> Result<web::Data<Tenancy>, AppError> {
        req.app_data::<web::Data<Tenancy>>()
            .cloned()
            .ok_or_else(|| AppError::internal("Tenancy is not registered as app data"))
    }

    /// The isolation strategy this service was generated with.
    pub fn strategy(&self) -> &isolation::Selected {
        &self.strategy
    }

    /// Refuses an application role that would defeat the isolation strategy (for
    /// Row-Level Security: a superuser, `BYPASSRLS`, or the owner of tenant tables).
    pub async fn check_app_role(&self) -> Result<(), AppRoleError> {
        let mut conn = self.control.get().await?;
        self.strategy
            .check_app_role(&mut conn)
            .await
            .map_err(AppRoleError::Unsafe)
    }

    /// A connection of the control plane.
    pub async fn control_connection(&self) -> Result<ControlConnection, AppError> {
        Ok(self.control.get().await?)
    }

    /// A connection scoped to `tenant`: one already scoped to it, else a shared one
    /// re-scoped (schema, rls), else a new one.
    pub async fn tenant_connection(&self, tenant: &Tenant) -> Result<TenantConnection, AppError> {
        let route = self.strategy.route(tenant).map_err(PoolError::Isolation)?;
        let conn = self
            .pool
            .get(tenant.id, route.home, route.scope.as_ref(), || {
                self.strategy.connect_config(&self.ctx, tenant)
            })
            .await?;
        Ok(TenantConnection::new(conn))
    }

    /// Closes the idle connections of `tenant`'s own database (database per tenant).
    pub(crate) fn close_connections_of(&self, tenant: &Tenant) {
        self.pool.close_idle(Home::Tenant(tenant.id));
    }

    pub fn connection_stats(&self) -> ConnectionStats {
        let (tenant, tenant_limit) = self.pool.stats();
        let (control, control_limit) = self.control.pool().stats();
        ConnectionStats {
            tenant,
            control,
            degraded: tenant_limit.or(control_limit),
        }
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

/// `base` with PostgreSQL's `statement_timeout` (in milliseconds) in its start-up options.
pub(crate) fn with_statement_timeout(
    base: &tokio_postgres::Config,
    timeout: Duration,
) -> tokio_postgres::Config {
    with_option(
        base,
        format!("-c statement_timeout={}", timeout.as_millis()),
    )
}

/// `base` with `-c name="value"` added to its start-up options. `value` must be a safe
/// identifier (a `SchemaName` or a constant).
pub(crate) fn with_session_option(
    base: &tokio_postgres::Config,
    name: &str,
    value: &str,
) -> tokio_postgres::Config {
    with_option(base, format!("-c {name}=\"{value}\""))
}

fn with_option(base: &tokio_postgres::Config, option: String) -> tokio_postgres::Config {
    let mut config = base.clone();
    let options = match base.get_options() {
        Some(existing) if !existing.trim().is_empty() => format!("{existing} {option}"),
        _ => option,
    };
    config.options(&options);
    config
}

fn pool_settings(database: &DatabaseSettings, max: u32, per_tenant: u32) -> PoolSettings {
    PoolSettings {
        max_connections: max,
        per_tenant,
        wait: database.pool_timeout,
        idle_timeout: database.tenant_pool_idle_timeout,
        max_lifetime: database.pool_recycle,
        backoff: TOO_MANY_CONNECTIONS_BACKOFF,
    }
}
