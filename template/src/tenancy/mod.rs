//! Multi-tenancy: the tenant registry, resolving a request's tenant, and scoped access to
//! the tenant's data.
//!
//! The only way to reach tenant tables is a [`TenantConnection`](crate::db::TenantConnection),
//! obtained from [`Tenancy::tenant_connection`] (handlers use the extractor in [`extract`]).

pub mod audit;
pub mod cache;
pub mod changes;
pub mod directory;
pub mod extract;
pub mod isolation;
pub mod lifecycle;
pub mod middleware;
pub mod moves;
pub mod rate;
pub mod registry;
pub mod resolve;
pub mod settings;
{%- if redis_cache %}
pub mod shared_cache;
{%- endif %}
{%- if isolation == "hybrid" %}
pub mod tiers;
{%- endif %}

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::db::connect::ConnectError;
use crate::db::connect::{with_session_option, with_statement_timeout};
use crate::db::migrate::MigrateError;
use crate::db::pool::{Home, Limits, Pool, PoolError, PoolSettings, PoolStats};
use crate::db::settings::{DatabaseSettings, OWNER_CONNECT_TIMEOUT, Pooler};
use crate::db::tls::PgConfig;
use crate::db::{
    CONTROL_SCHEMA, ControlPool, RequestTransactions, TenantConnection, outages, pooler, runtime,
};
use crate::domain::{SqlIdentifier, Tenant, TenantIdentifier};
use crate::metrics::Metrics;
use cache::{CacheStats, TenantCache};
pub use directory::{RegistryCheck, TenantDirectory, TenantError};
use isolation::{Context, Strategy};
use settings::TenancySettings;

/// After PostgreSQL refused a connection for lack of slots, pools hold the connections
/// they have for this long before they try to grow again.
const TOO_MANY_CONNECTIONS_BACKOFF: Duration = Duration::from_secs(2);

/// Everything the service shares between requests, CLI commands and tests.
pub struct Tenancy {
    pub settings: TenancySettings,
    /// What the isolation strategy may use: roles, runtime, control pool.
    ctx: Context,
    strategy: isolation::Selected,
    /// The connections tenants share.
    pool: Pool,
    pub control: ControlPool,
    /// Who each tenant is: the caches and the registry.
    pub(crate) directory: TenantDirectory,
    /// Request rate limits per tenant.
    pub rate: rate::RateLimiter,
    /// What `/metrics` shows.
    pub metrics: Metrics,
    /// Wakes this process's job workers when a job is enqueued here (see `jobs`).
    pub jobs_enqueued: Arc<tokio::sync::Notify>,
    /// Set once the owner's URL was found to give migrations a session of their own.
    owner_session: tokio::sync::OnceCell<()>,
    /// The listed servers whose application role start-up could not check (they did not
    /// answer): each is checked before this process opens its first tenant connection there.
    unchecked: std::sync::Mutex<HashSet<isolation::ServerAddress>>,
    /// Stops listening for tenant changes when the service is dropped.
    _watching: Option<tokio_util::sync::DropGuard>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("TENANCY_DATABASE_URL: {0}")]
    DatabaseUrl(String),
    #[error("TENANCY_MIGRATION_DATABASE_URL: {0}")]
    MigrationDatabaseUrl(String),
    #[error("could not start the database runtime: {0}")]
    Runtime(#[from] std::io::Error),
{%- if redis_cache %}
    #[error("{0}")]
    Redis(String),
{%- endif %}
}

/// What `/health` shows about connections.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionStats {
    pub tenant: PoolStats,
    pub control: PoolStats,
    /// Why the service runs with fewer connections than configured, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Why no tenant is served at all, if none is (a pooler in transaction mode found
    /// behind connections that keep scopes on their sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
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

/// The application role's and the owner's connection settings, and the application role
/// when it is not the owner (it is then granted access to what the owner creates).
fn roles(
    database: &DatabaseSettings,
) -> Result<(PgConfig, PgConfig, Option<SqlIdentifier>), StartupError> {
    let ca_file = database.ca_file.as_deref();
    let mut app = PgConfig::parse(database.url.expose_secret(), ca_file)
        .map_err(StartupError::DatabaseUrl)?;
    if app.get_application_name().is_none() {
        app.application_name(env!("CARGO_PKG_NAME"));
    }
    if app.get_connect_timeout().is_none() {
        app.connect_timeout(database.pool_timeout);
    }
    if database.pooler == Pooler::Transaction {
        app = app
            .through_transaction_pooler(database.pooler_prepared_statements)
            .map_err(StartupError::DatabaseUrl)?;
    }
    let app = with_statement_timeout(&app, database.statement_timeout);
    let mut owner = match &database.migration_url {
        Some(url) => PgConfig::parse(url.expose_secret(), ca_file)
            .map_err(StartupError::MigrationDatabaseUrl)?,
        None => PgConfig::parse(database.url.expose_secret(), ca_file)
            .map_err(StartupError::DatabaseUrl)?,
    };
    if owner.get_connect_timeout().is_none() {
        owner.connect_timeout(OWNER_CONNECT_TIMEOUT);
    }
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
    Ok((app, owner, app_role))
}

impl Tenancy {
    pub fn new(settings: TenancySettings) -> Result<Self, StartupError> {
        let runtime = runtime::handle()?;
        let database = &settings.database;
        let (app, owner, app_role) = roles(database)?;
        let has_owner = database.migration_url.is_some();
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
        let strategy = isolation::Selected::new(&settings.isolation, database);
        let mut cache = TenantCache::new(settings.tenant_cache_ttl);
        if database.polls_changes() {
            cache = cache.polled();
        }
        let cache = Arc::new(cache);
{%- if redis_cache %}
        let shared = shared_cache::SharedCache::new(
            &settings.redis,
            app.get_dbname().or(app.get_user()).unwrap_or("postgres"),
            settings.tenant_cache_ttl,
            runtime.clone(),
        )
        .map_err(StartupError::Redis)?;
        let rate = rate::RateLimiter::new(settings.rate.clone(), shared.clone());
{%- else %}
        let rate = rate::RateLimiter::new(settings.rate.clone());
{%- endif %}
        Ok(Self {
            settings,
            ctx: Context {
                app,
                owner,
                app_role,
                runtime,
                control: control.clone(),
                has_owner,
            },
            strategy,
            pool,
            directory: TenantDirectory::new(cache, {% if redis_cache %}shared, {% endif %}control.clone()),
            control,
            rate,
            metrics: Metrics::default(),
            jobs_enqueued: Arc::default(),
            owner_session: tokio::sync::OnceCell::new(),
            unchecked: std::sync::Mutex::default(),
            _watching: None,
        })
    }

    /// Starts listening for changes to the registry made anywhere (see `changes`); waits
    /// for the first attempt, and keeps trying in the background if it failed.
    pub async fn watch_changes(&mut self) {
        let Some((_, config)) = self.listen_config() else {
            tracing::info!(
                "TENANCY_POOLER=transaction and no URL with a session of its own \
                 (TENANCY_LISTEN_DATABASE_URL, TENANCY_MIGRATION_DATABASE_URL): tenant \
                 changes are polled, cache entries are read again after 0.5 s"
            );
            return;
        };
        let stop = tokio_util::sync::CancellationToken::new();
{%- if redis_cache %}
        changes::watch(
            config,
            self.directory.cache.clone(),
            self.directory.shared.clone(),
            &self.ctx.runtime,
            stop.clone(),
        )
        .await;
{%- else %}
        let cache = self.directory.cache.clone();
        changes::watch(config, cache, &self.ctx.runtime, stop.clone()).await;
{%- endif %}
        self._watching = Some(stop.drop_guard());
    }

    /// What the isolation strategy uses (roles, runtime, control pool).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The isolation strategy this service was generated with.
    pub fn strategy(&self) -> &isolation::Selected {
        &self.strategy
    }

    /// The servers tenants may be placed on.
    pub fn servers(&self) -> &isolation::Servers {
{%- if isolation == "hybrid" %}
        &self.strategy.databases().servers
{%- else %}
        &self.strategy.servers
{%- endif %}
    }

    /// What moves tenants between servers, step by step (`tenant move` runs the steps).
    pub fn relocator(&self) -> &impl isolation::Relocate {
{%- if isolation == "hybrid" %}
        self.strategy.databases()
{%- else %}
        &self.strategy
{%- endif %}
    }
{%- if isolation == "hybrid" %}

    /// What places tenants' own databases on servers (hybrid's `database` tier).
    pub fn databases(&self) -> &isolation::DatabaseStrategy {
        self.strategy.databases()
    }
{%- endif %}

    /// Checks that the tenant registry is there and readable by the application role
    /// (what `serve` checks instead of migrating when it has no owner's URL).
    pub async fn check_registry(&self) -> Result<(), RegistryCheck> {
        self.directory.counts().await.map(drop)
    }

    /// How many tenants the registry holds in each status (`/health`, `/metrics`).
    pub async fn tenant_counts(&self) -> Result<Vec<(String, i64)>, RegistryCheck> {
        self.directory.counts().await
    }

    /// Refuses a list of servers (`TENANCY_DATABASE_SERVERS`) that leaves out one the
    /// registry places tenants on: the service reaches only the servers its configuration
    /// names, and a server taken off the list by mistake would leave tenants unserved.
    pub async fn check_servers_listed(&self) -> Result<(), String> {
        let mut conn = self.control.get().await.map_err(|e| e.to_string())?;
        let unlisted = (self.servers().unlisted(&mut conn).await).map_err(|e| e.to_string())?;
        if unlisted.is_empty() {
            return Ok(());
        }
        let unlisted: Vec<String> = (unlisted.iter())
            .map(|(server, count)| match count {
                1 => format!("{server} (1 tenant)"),
                _ => format!("{server} ({count} tenants)"),
            })
            .collect();
        Err(format!(
            "the tenant registry places tenants on servers that TENANCY_DATABASE_SERVERS does \
             not list: {}; list them again, or move or destroy those tenants first",
            unlisted.join(", ")
        ))
    }

    /// Refuses an application role that would defeat the isolation strategy (for
    /// Row-Level Security: a superuser, `BYPASSRLS`, or the owner of tenant tables).
    pub async fn check_app_role(&self) -> Result<(), AppRoleError> {
        let mut conn = self.control.get().await?;
        self.strategy
            .check_app_role(&mut conn)
            .await
            .map_err(AppRoleError::Unsafe)?;
        self.check_app_role_elsewhere().await?;
        Ok(())
    }

    /// The same on each listed server, as the application role logs in there (a role of
    /// that server's own). A server that does not answer is checked later, before the
    /// first tenant connection there ([`Self::check_server_of`]), and a warning says so.
    async fn check_app_role_elsewhere(&self) -> Result<(), AppRoleError> {
        let servers = self.servers();
        let checks = servers.listed().iter().map(|server| async move {
            let config = (servers.app_config(&self.ctx, Some(server))).map_err(AppRoleError::Unsafe)?;
            match self.ctx.connect(config).await {
                Ok(mut conn) => (self.strategy.check_app_role(&mut conn).await)
                    .map_err(|why| AppRoleError::Unsafe(format!("on {}: {why}", server.as_str()))),
                Err(error) => {
                    tracing::warn!(server = server.as_str(), %error, "the application role could not be checked on this server: it does not answer; it is checked before the first tenant connection there");
                    self.unchecked_servers().insert(server.clone());
                    Ok(())
                }
            }
        });
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .collect()
    }

    fn unchecked_servers(&self) -> std::sync::MutexGuard<'_, HashSet<isolation::ServerAddress>> {
        self.unchecked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks the application role on `tenant`'s server as start-up does, if start-up
    /// could not (the server did not answer then): a role that would defeat the strategy
    /// there is refused (500, the reason in the log), and checked again on the next
    /// connection.
    async fn check_server_of(&self, tenant: &Tenant) -> Result<(), PoolError> {
        let Some(server) = &tenant.server else {
            return Ok(());
        };
        if !self.unchecked_servers().contains(server) {
            return Ok(());
        }
        let config =
            (self.servers().app_config(&self.ctx, Some(server))).map_err(PoolError::Isolation)?;
        let mut conn = self.ctx.connect(config).await?;
        if let Err(why) = self.strategy.check_app_role(&mut conn).await {
            let why = format!("TENANCY_DATABASE_URL on {}: {why}", server.as_str());
            tracing::error!(server = server.as_str(), error = %why, "tenants of this server are not served");
            return Err(PoolError::Isolation(why));
        }
        self.unchecked_servers().remove(server);
        tracing::info!(
            server = server.as_str(),
            "the application role is checked on this server"
        );
        Ok(())
    }

    /// A connection scoped to `tenant`: one already scoped to it, else a shared one
    /// re-scoped (schema, rls), else a new one. Behind a transaction pooler, a transaction
    /// scoped to it, which [`TenantConnection::finish`] ends.
    pub async fn tenant_connection(&self, tenant: &Tenant) -> Result<TenantConnection, PoolError> {
        self.tenant_connection_in(tenant, None).await
    }

    /// The same for a request, whose end finishes the transaction (transaction mode).
    pub(crate) async fn tenant_connection_in(
        &self,
        tenant: &Tenant,
        request: Option<RequestTransactions>,
    ) -> Result<TenantConnection, PoolError> {
        let route = self.strategy.route(tenant).map_err(PoolError::Isolation)?;
        let limits = Limits {
            connections: tenant.limits.max_connections.map(|n| n.get()),
            statement_timeout: (tenant.limits.statement_timeout)
                .map(|s| Duration::from_secs(s.get().into())),
        };
        let conn = self
            .pool
            .get(tenant.id, route.home, route.scope.as_ref(), limits, || {
                self.connect_config(tenant)
            })
            .await?;
        Ok(TenantConnection::new(conn, request))
    }

    /// The settings of a new connection for `tenant`, once the application role is
    /// checked on its server.
    async fn connect_config(&self, tenant: &Tenant) -> Result<PgConfig, PoolError> {
        self.check_server_of(tenant).await?;
        self.strategy.connect_config(&self.ctx, tenant).await
    }

    /// Whether tenant changes are polled rather than heard (a transaction pooler and no
    /// URL for `LISTEN`): cache entries are then read again after a second.
    pub fn polls_changes(&self) -> bool {
        self.settings.database.polls_changes()
    }

    /// Whether each checkout is one transaction (`TENANCY_POOLER=transaction`).
    /// Learns how the server words its outages (see `db::outages`), on a connection of the
    /// application role's own; a server that does not answer teaches nothing.
    pub async fn learn_outage_words(&self) {
        match self.ctx.connect(self.ctx.app.clone()).await {
            Ok(conn) => outages::learn(conn, !self.per_transaction()).await,
            Err(error) => {
                tracing::warn!(error = %error, "the server's words for outages were not learned")
            }
        }
    }

    pub fn per_transaction(&self) -> bool {
        self.settings.database.pooler == Pooler::Transaction
    }

    /// Refuses to serve through a pooler in transaction mode unless
    /// `TENANCY_POOLER=transaction` says so (see `db::pooler`); in that mode, checks that
    /// the change listener's URL gives it a session.
    pub async fn check_pooler(&self) -> Result<(), String> {
        if !self.per_transaction() {
            return match pooler::shares_sessions(&self.ctx.app, &self.ctx.runtime).await {
                Ok(None) => Ok(()),
                Ok(Some(evidence)) => Err(format!(
                    "TENANCY_DATABASE_URL leads to a pooler in transaction mode ({evidence}): \
                     tenant scopes set on a session would reach other clients. Set \
                     TENANCY_POOLER=transaction, or point TENANCY_DATABASE_URL at PostgreSQL \
                     itself or at a pooler in session mode"
                )),
                Err(error) => Err(format!("TENANCY_DATABASE_URL: {}", pooler_hint(&error))),
            };
        }
        if let Some((variable, config)) = self.listen_config() {
            match pooler::shares_sessions(&config, &self.ctx.runtime).await {
                Ok(None) => {}
                Ok(Some(evidence)) => {
                    return Err(format!(
                        "{variable} leads to a pooler in transaction mode ({evidence}): \
                         LISTEN needs a session of its own; point it at PostgreSQL itself, \
                         or leave TENANCY_LISTEN_DATABASE_URL unset to poll the registry"
                    ));
                }
                Err(error) => return Err(format!("{variable}: {error}")),
            }
        }
        Ok(())
    }

    /// Refuses work of the owner (migrations, provisioning, destroying) over a URL without a
    /// session of its own: behind a transaction pooler its start-up `search_path`, its
    /// advisory locks and its prepared statements would reach other clients. Checked once.
    pub(crate) async fn check_owner_session(&self) -> Result<(), MigrateError> {
        let database = &self.settings.database;
        self.owner_session
            .get_or_try_init(|| async {
                let Some(_) = &database.migration_url else {
                    if database.pooler == Pooler::Transaction {
                        return Err(MigrateError::NoSession(
                            "TENANCY_POOLER=transaction: migrations, provisioning and \
                             destroying tenants need a session of the owner: set \
                             TENANCY_MIGRATION_DATABASE_URL to a URL that reaches PostgreSQL \
                             itself (or a pooler in session mode)"
                                .into(),
                        ));
                    }
                    // The same URL as the application's, checked by `serve`.
                    return Ok(());
                };
                match pooler::shares_sessions(&self.ctx.owner, &self.ctx.runtime).await? {
                    None => Ok(()),
                    Some(evidence) => Err(MigrateError::NoSession(format!(
                        "TENANCY_MIGRATION_DATABASE_URL leads to a pooler in transaction mode \
                         ({evidence}): migrations need a session of their own; point it at \
                         PostgreSQL itself or at a pooler in session mode"
                    ))),
                }
            })
            .await
            .map(drop)
    }

    /// Where the change listener connects, and the variable that named it: the URL of
    /// the application role, except behind a transaction pooler, where `LISTEN` needs
    /// `TENANCY_LISTEN_DATABASE_URL` or else the migration URL (none: the registry is
    /// polled instead).
    fn listen_config(&self) -> Option<(&'static str, PgConfig)> {
        let database = &self.settings.database;
        let ca_file = database.ca_file.as_deref();
        let parse = |variable: &'static str, url: &secrecy::SecretString| {
            PgConfig::parse(url.expose_secret(), ca_file)
                .ok()
                .map(|config| (variable, config))
        };
        if database.polls_changes() {
            return None;
        }
        if let Some(url) = &database.listen_url {
            return parse("TENANCY_LISTEN_DATABASE_URL", url);
        }
        match database.pooler {
            Pooler::Session => Some(("TENANCY_DATABASE_URL", self.control.config().clone())),
            Pooler::Transaction => database
                .migration_url
                .as_ref()
                .and_then(|url| parse("TENANCY_MIGRATION_DATABASE_URL", url)),
        }
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
            refused: self.pool.refused(),
        }
    }

    /// The active tenant named `identifier` (see `directory`).
    pub async fn active_tenant(
        &self,
        identifier: &TenantIdentifier,
    ) -> Result<Arc<Tenant>, TenantError> {
        self.directory.active(identifier).await
    }

    /// How many tenants' registry metadata this process last read as undecodable.
    pub fn undecodable_tenants(&self) -> usize {
        self.directory.undecodable()
    }

    /// What the tenant cache and the registry did since start-up.
    pub fn cache_stats(&self) -> CacheStats {
        self.directory.cache_stats()
    }
{%- if redis_cache %}

    /// What the cache's shared level (Redis) did since start-up, and whether it is used.
    pub fn shared_cache_stats(&self) -> shared_cache::SharedStats {
        self.directory.shared_stats()
    }
{%- endif %}
}

fn pool_settings(database: &DatabaseSettings, max: u32, per_tenant: u32) -> PoolSettings {
    PoolSettings {
        max_connections: max,
        per_tenant,
        wait: database.pool_timeout,
        idle_timeout: database.tenant_pool_idle_timeout,
        max_lifetime: database.pool_recycle,
        backoff: TOO_MANY_CONNECTIONS_BACKOFF,
        slow_statement: database.slow_query,
        pooler: database.pooler,
        statement_timeout: database.statement_timeout,
    }
}

/// `error`, with what to do when a pooler refused a start-up parameter.
fn pooler_hint(error: &ConnectError) -> String {
    let text = error.to_string();
    if text.contains("unsupported startup parameter") {
        format!(
            "{text}: this looks like a pooler in transaction mode; set TENANCY_POOLER=transaction"
        )
    } else {
        text
    }
}
