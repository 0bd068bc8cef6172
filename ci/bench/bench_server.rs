//! The bare baseline of ci/bench/connections.sh, copied into a generated `acme-api`
//! project as an example (it is not part of the template): `GET /api/notes?limit=20` on
//! a plain bb8 + diesel-async pool whose connections are fixed to one schema, with the
//! service's own `Note` model and request logger, and no tenancy at all.
//!
//! BENCH_DATABASE_URL (with `options=-c search_path=...`), BENCH_POOL, BENCH_PORT.

use actix_web::{App, HttpResponse, HttpServer, web};
use acme_api::error::AppError;
use acme_api::routes::notes::Note;
use acme_api::schema::notes;
use acme_api::telemetry::TenantRootSpan;
use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tracing_actix_web::TracingLogger;

type Pool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

async fn bare_list(pool: web::Data<Pool>) -> Result<HttpResponse, AppError> {
    let mut conn = pool.get().await.map_err(AppError::internal)?;
    let found: Vec<Note> = notes::table
        .select(Note::as_select())
        .order(notes::id.desc())
        .limit(20)
        .load(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().json(found))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("BENCH_DATABASE_URL")?;
    let size: u32 = std::env::var("BENCH_POOL")?.parse()?;
    let port: u16 = std::env::var("BENCH_PORT")?.parse()?;
    actix_web::rt::System::new().block_on(async move {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let pool = web::Data::new(Pool::builder().max_size(size).build(manager).await?);
        HttpServer::new(move || {
            App::new()
                .app_data(pool.clone())
                .wrap(TracingLogger::<TenantRootSpan>::new())
                .route("/api/notes", web::get().to(bare_list))
        })
        .bind(("127.0.0.1", port))?
        .run()
        .await?;
        Ok(())
    })
}
