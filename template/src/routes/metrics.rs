//! `GET /metrics`: Prometheus text format (see `crate::metrics`), outside `/api`, so no
//! tenant is needed. With `TENANCY_METRICS_TOKEN` set it needs
//! `Authorization: Bearer <token>`.

use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::AppError;
use crate::metrics::{MetricsSettings, record_state};
use crate::tenancy::{Tenancy, registry};

const COUNT_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes(cfg: &mut web::ServiceConfig, settings: MetricsSettings) {
    cfg.app_data(web::Data::new(settings));
    cfg.route("/metrics", web::get().to(metrics));
}

async fn metrics(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    settings: web::Data<MetricsSettings>,
) -> Result<HttpResponse, AppError> {
    if let Some(token) = &settings.token
        && !super::bearer_is(&req, token)
    {
        return Err(AppError::Unauthorized {
            detail: "/metrics needs the bearer token of TENANCY_METRICS_TOKEN".into(),
        });
    }
    // Tenant counts by status; a registry that does not answer leaves them out
    // (`tenancy_registry_up` 0) rather than failing the scrape.
    let counts = tokio::time::timeout(COUNT_TIMEOUT, async {
        let mut conn = tenancy.control.get().await.ok()?;
        registry::count_by_status(&mut conn).await.ok()
    })
    .await
    .ok()
    .flatten();
    record_state(&tenancy, counts.as_deref());
    Ok(HttpResponse::Ok()
        .content_type(ContentType(
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .map_err(AppError::internal)?,
        ))
        .body(tenancy.metrics.render()))
}
