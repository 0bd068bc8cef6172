//! The bare baseline of the benchmarks (ci/bench/connections.sh, ci/bench/pooler.sh),
//! copied into a generated `acme-api` project as an example (it is not part of the
//! template): `GET /api/notes?limit=20` with the service's own pool, connection set-up,
//! statement cache, runtime, `Note` model and request logger, and nothing of tenancy: no
//! resolution, no registry, no scope. Its connections find the table through their role's
//! `search_path` (`ALTER ROLE ... SET search_path`), which works through a pooler too.
//!
//! BENCH_DATABASE_URL, BENCH_POOL (connections), BENCH_PORT; BENCH_POOLER=transaction for
//! a pooler in transaction mode: no prepared statement outlives its transaction, and the
//! read is one transaction (`BEGIN` in one flight with the `SELECT`, then `COMMIT`), the
//! least that diesel's prepared statements need to stay on one server session.

use std::time::Duration;

use acme_api::db::pool::{Home, Limits, Pool, PoolSettings};
use acme_api::db::settings::Pooler;
use acme_api::db::tls::PgConfig;
use acme_api::db::runtime;
use acme_api::error::AppError;
use acme_api::routes::notes::Note;
use acme_api::schema::notes;
use acme_api::telemetry::TenantRootSpan;
use actix_web::{App, HttpResponse, HttpServer, web};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::future::try_join;
use tracing_actix_web::TracingLogger;

struct Bare {
    pool: Pool,
    config: PgConfig,
    per_transaction: bool,
}

async fn bare_list(bare: web::Data<Bare>) -> Result<HttpResponse, AppError> {
    let mut conn = bare
        .pool
        .get(uuid::Uuid::nil(), Home::Shared, None, Limits::default(), || async {
            Ok(bare.config.clone())
        })
        .await?;
    let query = notes::table
        .select(Note::as_select())
        .order(notes::id.desc())
        .limit(20);
    let found: Vec<Note> = if bare.per_transaction {
        // `BEGIN` in one flight with the statement (as the service sends its own with its
        // scope statement), then `COMMIT`.
        let shared: &AsyncPgConnection = &conn;
        let (mut begin, mut read, mut end) = (shared, shared, shared);
        match try_join(begin.batch_execute("BEGIN"), query.load(&mut read)).await {
            Ok(((), found)) => {
                end.batch_execute("COMMIT").await?;
                found
            }
            Err(error) => {
                end.batch_execute("ROLLBACK").await?;
                return Err(error.into());
            }
        }
    } else {
        query.load(&mut *conn).await?
    };
    Ok(HttpResponse::Ok().json(found))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("BENCH_DATABASE_URL")?;
    let size: u32 = std::env::var("BENCH_POOL")?.parse()?;
    let port: u16 = std::env::var("BENCH_PORT")?.parse()?;
    let per_transaction = std::env::var("BENCH_POOLER").is_ok_and(|p| p == "transaction");
    let mut config = PgConfig::parse(&url, None)?;
    config.application_name("bench_server");
    if per_transaction {
        config = config.through_transaction_pooler(false)?;
    }
    let settings = PoolSettings {
        max_connections: size,
        per_tenant: size,
        wait: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(300),
        max_lifetime: Duration::from_secs(1800),
        backoff: Duration::from_secs(2),
        slow_statement: Some(Duration::from_millis(500)),
        pooler: Pooler::Session,
        statement_timeout: Duration::from_secs(30),
    };
    let bare = web::Data::new(Bare {
        pool: Pool::new("bare", settings, runtime::handle()?),
        config,
        per_transaction,
    });
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(bare.clone())
                .wrap(TracingLogger::<TenantRootSpan>::new())
                .route("/api/notes", web::get().to(bare_list))
        })
        .bind(("127.0.0.1", port))?
        .run()
        .await?;
        Ok(())
    })
}
