//! Benchmark server, copied into a generated `acme-api` project as an example by
//! ci/bench/scoped-read.sh (it is not part of the template).
//!
//! BENCH_MODE=scoped: the generated application as it is (tenant middleware, cache,
//!   tenant-bound pools, the real `GET /api/notes` handler).
//! BENCH_MODE=bare: the same query on a plain pool fixed to one schema, no tenancy.

use std::str::FromStr;

use actix_web::{App, HttpResponse, HttpServer, web};
use acme_api::config::Settings;
use acme_api::db::pools::{ControlPool, control_pool};
use acme_api::db::runtime;
use acme_api::error::AppError;
use acme_api::routes::notes::Note;
use acme_api::schema::notes;
use acme_api::startup;
use acme_api::telemetry::TenantRootSpan;
use acme_api::tenancy::Tenancy;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use secrecy::ExposeSecret;
use tracing_actix_web::TracingLogger;

async fn bare_list(pool: web::Data<ControlPool>) -> Result<HttpResponse, AppError> {
    let mut conn = pool.get().await?;
    let found: Vec<Note> = notes::table
        .select(Note::as_select())
        .order(notes::id.desc())
        .limit(20)
        .load(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(found))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::var("BENCH_MODE")?;
    let (settings, _) = Settings::load()?;
    let address = (settings.host.clone(), settings.port);
    let workers = settings.workers.unwrap_or(2);
    actix_web::rt::System::new().block_on(async move {
        match mode.as_str() {
            "scoped" => {
                let tenancy = web::Data::new(Tenancy::new(settings)?);
                HttpServer::new(move || startup::app(tenancy.clone()))
                    .workers(workers)
                    .bind(address)?
                    .run()
                    .await?;
            }
            "bare" => {
                let mut config =
                    tokio_postgres::Config::from_str(settings.database_url.expose_secret())?;
                config.options("-c search_path=tenant_t0");
                let pool = web::Data::new(control_pool(config, &settings.database, &runtime::handle()?));
                HttpServer::new(move || {
                    App::new()
                        .app_data(pool.clone())
                        .wrap(TracingLogger::<TenantRootSpan>::new())
                        .route("/api/notes", web::get().to(bare_list))
                })
                .workers(workers)
                .bind(address)?
                .run()
                .await?;
            }
            other => return Err(format!("BENCH_MODE must be scoped or bare, not {other}").into()),
        }
        Ok(())
    })
}
