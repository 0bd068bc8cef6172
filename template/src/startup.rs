//! Building the application (shared by `serve` and the tests) and running the server.

use std::net::TcpListener;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, Error, HttpRequest, HttpServer, web};
use tracing_actix_web::TracingLogger;

use crate::config::Settings;
use crate::db::migrate::MigrateError;
use crate::db::pool::PoolError;
use crate::error::{AppError, ErrorDetails, problem_details};
use crate::jobs::worker::Workers;
use crate::jobs::{Kinds, Queue};
use crate::routes;
use crate::telemetry::TenantRootSpan;
use crate::tenancy::middleware::BodyRead;
use crate::tenancy::{RegistryCheck, StartupError, Tenancy};

/// The whole application around a shared `Tenancy` (it keeps no borrow of `settings`).
pub fn app(
    tenancy: web::Data<Tenancy>,
    settings: &Settings,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody + use<>>,
        Error = Error,
        InitError = (),
    > + use<>,
> {
    App::new()
        .app_data(tenancy)
        .app_data(web::Data::new(ErrorDetails(settings.http.error_details)))
        .app_data(web::Data::new(crate::openapi::Served::new(settings)))
        .app_data(web::Data::new(BodyRead {
            limit: BodyRead::LIMIT,
            timeout: settings.http.body_timeout,
        }))
        .app_data(
            web::JsonConfig::default()
                .limit(BodyRead::LIMIT)
                .error_handler(|e, _| {
                    AppError::BadRequest(format!("invalid JSON body: {e}")).into()
                }),
        )
        .app_data(
            web::PathConfig::default().error_handler(|_, _| AppError::NotFound("resource").into()),
        )
        .app_data(web::QueryConfig::default().error_handler(|e, _| {
            AppError::BadRequest(format!("invalid query string: {e}")).into()
        }))
{%- if path_resolver %}
        .app_data(web::Data::new(settings.tenancy.resolve.path.clone()))
        .wrap(from_fn(crate::tenancy::resolve::path::strip_tenant_prefix))
{%- endif %}
        .wrap(from_fn(problem_details))
        .wrap(TracingLogger::<TenantRootSpan>::new())
        .wrap(from_fn(routes::metrics::record_request))
        .configure(routes::health::routes)
        .configure(|cfg| routes::metrics::routes(cfg, settings.metrics.clone()))
{%- if admin_api %}
        .configure(|cfg| routes::admin::routes(cfg, settings.admin.clone()))
{%- endif %}
        .service(web::resource("/openapi.json").get(crate::openapi::openapi_json))
        .configure(|cfg| routes::docs::routes(cfg, settings.http.api_docs))
        .configure(routes::api)
        .default_service(web::to(not_found))
}

async fn not_found(_: HttpRequest) -> Result<&'static str, AppError> {
    Err(AppError::NotFound("resource"))
}

/// What `serve` does before it listens (the tests start from here too): the shared
/// `Tenancy`, with the control-plane migrations applied (given the owner's URL; without
/// it, the application role may not change the schema, so `migrate` must have run), the
/// application role checked and changes to the registry listened for.
pub async fn prepare(settings: &Settings) -> Result<web::Data<Tenancy>, ServeError> {
    let mut tenancy = Tenancy::new(settings.tenancy.clone())?;
    tenancy.check_pooler().await.map_err(ServeError::Pooler)?;
    if settings.tenancy.database.migration_url.is_some() {
        let applied = tenancy
            .migrate_control()
            .await
            .map_err(ServeError::Migrate)?;
        if !applied.is_empty() {
            tracing::info!(applied = ?applied, "control-plane migrations applied");
        }
    } else {
        // Advice by cause: `migrate` does not help a server that does not answer.
        tenancy.check_registry().await.map_err(|e| match e {
            RegistryCheck::Unreachable(e) => ServeError::Unreachable(e),
            RegistryCheck::Unreadable(e) => ServeError::NotMigrated(e.to_string()),
        })?;
    }
    tenancy
        .check_app_role()
        .await
        .map_err(|e| ServeError::UnsafeRole(e.to_string()))?;
    (tenancy.check_servers_listed().await).map_err(ServeError::Servers)?;
    tenancy.learn_outage_words().await;
    tenancy.watch_changes().await;
    Ok(web::Data::new(tenancy))
}

/// Every job type this service runs (add yours here).
pub fn job_kinds() -> Kinds {
    Kinds::default().with::<routes::notes::ImportNotes>()
}

/// A server bound to its listener, not yet running, with its job workers.
pub struct Application {
    port: u16,
    server: Server,
    workers: Workers,
}

impl Application {
    /// Applies the control-plane migrations and binds `TENANCY_HOST:TENANCY_PORT`
    /// (port 0 picks a free one).
    pub async fn build(settings: Settings) -> Result<Self, ServeError> {
        tracing::info!(
            database = %settings.tenancy.database.describe(),
            isolation = crate::config::ISOLATION_STRATEGY,
            resolution = crate::config::RESOLUTION_STRATEGY,
            pooler = settings.tenancy.database.pooler.as_str(),
            "starting"
        );
{%- if admin_api %}
        if settings.admin.token.is_none() {
            tracing::warn!("TENANCY_ADMIN_TOKEN is not set: every admin API request is refused");
        }
{%- endif %}
        let http = &settings.http;
        let listener = TcpListener::bind((http.host.as_str(), http.port))
            .map_err(|e| ServeError::Bind(format!("{}:{}", http.host, http.port), e))?;
        let port = listener.local_addr().map_err(ServeError::Io)?.port();
        let (workers, shutdown) = (http.workers, http.shutdown_timeout);
        let tenancy = prepare(&settings).await?;
        let jobs = Workers::start(
            Queue::new(tenancy.clone()),
            job_kinds(),
            settings.jobs.clone(),
            shutdown,
        );
        let mut server = HttpServer::new(move || app(tenancy.clone(), &settings))
            .shutdown_timeout(shutdown.as_secs())
            .listen(listener)
            .map_err(ServeError::Io)?;
        if let Some(workers) = workers {
            server = server.workers(workers);
        }
        Ok(Self {
            port,
            server: server.run(),
            workers: jobs,
        })
    }

    /// Serves until SIGTERM or Ctrl-C, then drains in-flight requests and lets the job
    /// workers finish or give back the jobs in hand (`TENANCY_SHUTDOWN_TIMEOUT` each).
    pub async fn run_until_stopped(self) -> Result<(), ServeError> {
        tracing::info!(port = self.port, "listening");
        self.workers.stop_on(shutdown_signal());
        let served = self.server.await.map_err(ServeError::Io);
        self.workers.stop().await;
        served?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// SIGTERM or Ctrl-C (actix's server hears them too, and drains).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("control-plane migrations failed: {0}")]
    Migrate(#[source] MigrateError),
    #[error(
        "the tenant registry cannot be read ({0}): run `migrate` first, as the owner \
         (TENANCY_MIGRATION_DATABASE_URL), or give `serve` that URL too"
    )]
    NotMigrated(String),
    /// The registry's database does not answer: `migrate` would not help.
    #[error("TENANCY_DATABASE_URL: {0}")]
    Unreachable(PoolError),
    #[error("{0}")]
    UnsafeRole(String),
    /// A pooler in transaction mode where the settings do not expect one (or a URL that
    /// must give a session does not).
    #[error("{0}")]
    Pooler(String),
    /// Tenants on a server the configuration no longer lists.
    #[error("{0}")]
    Servers(String),
    #[error(transparent)]
    Io(std::io::Error),
}
