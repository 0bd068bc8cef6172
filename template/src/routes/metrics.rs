//! `GET /metrics`: Prometheus text format (see `crate::metrics`), outside `/api`, so no
//! tenant is needed. With `TENANCY_METRICS_TOKEN` set it needs
//! `Authorization: Bearer <token>`. Also the middleware that records every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::ContentType;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use crate::domain::Tenant;
use crate::error::AppError;
use crate::jobs;
use crate::metrics::MetricsSettings;
use crate::tenancy::Tenancy;
use crate::tenancy::extract::WaitedForConnection;

const COUNT_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes(cfg: &mut web::ServiceConfig, settings: MetricsSettings) {
    cfg.app_data(web::Data::new(settings));
    cfg.service(web::resource("/metrics").get(metrics));
}

/// Prometheus text: requests, errors, tenants, pools, cache, jobs.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses(
        (status = 200, description = "The Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "`TENANCY_METRICS_TOKEN` is set and the request does not carry it", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security((), ("metrics_token" = [])),
)]
pub(crate) async fn metrics(
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
    let counts = tokio::time::timeout(COUNT_TIMEOUT, tenancy.tenant_counts())
        .await
        .ok()
        .and_then(Result::ok);
    record_state(&tenancy, counts.as_deref());
    // The job queue's state likewise (left out when the registry does not answer).
    let jobs = tokio::time::timeout(COUNT_TIMEOUT, async {
        let mut conn = tenancy.control.get().await.ok()?;
        let counts = jobs::store::counts(&mut conn).await.ok()?;
        conn.finish(true).await.ok()?;
        Some(counts)
    })
    .await
    .ok()
    .flatten();
    if let Some(jobs) = jobs {
        record_jobs(&tenancy, &jobs);
    }
    // Each server tenants may be on: up, how fast, how many tenants.
    let servers = tenancy
        .servers()
        .check_all(tenancy.context(), COUNT_TIMEOUT)
        .await;
    record_servers(&tenancy, &servers);
    Ok(HttpResponse::Ok()
        .content_type(ContentType(
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .map_err(AppError::internal)?,
        ))
        .body(tenancy.metrics.render()))
}

/// Counts every request (`http_requests_total`), its duration
/// (`http_request_duration_seconds`), the errors it ended with (`app_errors_total`), and
/// with tenant labels on, `tenant_requests_total`. Wraps the whole application.
pub async fn record_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let tenancy = req.app_data::<web::Data<Tenancy>>().cloned();
    let settings = req.app_data::<web::Data<MetricsSettings>>().cloned();
    let method = req.method().to_string();
    let outcome = next.call(req).await;
    let Some(tenancy) = tenancy else {
        return outcome;
    };
    let took = started.elapsed().as_secs_f64();
    let (route, status, error, tenant, waited) = match &outcome {
        Ok(response) => (
            response
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into()),
            response.status().as_u16(),
            response
                .response()
                .error()
                .and_then(|e| e.as_error::<AppError>())
                .map(AppError::kind),
            response
                .request()
                .extensions()
                .get::<Arc<Tenant>>()
                .cloned(),
            (response.request().extensions())
                .get::<WaitedForConnection>()
                .is_some(),
        ),
        Err(error) => (
            "unmatched".into(),
            error.as_response_error().status_code().as_u16(),
            error.as_error::<AppError>().map(AppError::kind),
            None,
            false,
        ),
    };
    let tenant = match (tenant, settings) {
        (Some(tenant), Some(settings)) if settings.tenant_labels => Some(
            tenancy
                .metrics
                .tenant_label(tenant.identifier.as_str(), settings.tenant_label_limit),
        ),
        _ => None,
    };
    tenancy.metrics.record(|| {
        let status = status.to_string();
        let labels = [
            ("method", method),
            ("route", route),
            ("status", status.clone()),
        ];
        ::metrics::counter!("http_requests_total", &labels).increment(1);
        ::metrics::histogram!("http_request_duration_seconds", &labels).record(took);
        if let Some(kind) = error {
            ::metrics::counter!("app_errors_total", "kind" => kind).increment(1);
        }
        if let Some(tenant) = tenant {
            if waited {
                ::metrics::counter!("tenant_connection_waits_total", "tenant" => tenant.clone())
                    .increment(1);
            }
            ::metrics::counter!("tenant_requests_total", "tenant" => tenant, "status" => status)
                .increment(1);
        }
    });
    outcome
}

/// Records the job queue's state, read now: jobs per queue and state (`tenancy_jobs`), and
/// the age of each queue's oldest job due (`tenancy_jobs_oldest_due_seconds`).
fn record_jobs(tenancy: &Tenancy, counts: &[jobs::store::QueueCount]) {
    let queues = tenancy
        .metrics
        .job_queues(counts.iter().map(|c| c.queue.clone()));
    tenancy.metrics.record(|| {
        for queue in queues {
            let count = counts.iter().find(|c| c.queue == queue);
            let states = [
                ("queued", count.map_or(0, |c| c.queued)),
                ("failed", count.map_or(0, |c| c.failed)),
                ("running", count.map_or(0, |c| c.running)),
                ("dead", count.map_or(0, |c| c.dead)),
            ];
            for (state, jobs) in states {
                ::metrics::gauge!("tenancy_jobs", "queue" => queue.clone(), "state" => state)
                    .set(jobs as f64);
            }
            ::metrics::gauge!("tenancy_jobs_oldest_due_seconds", "queue" => queue)
                .set(count.map_or(0.0, |c| c.oldest_due_seconds));
        }
    });
}

/// Records the state of pools, cache and registry, read now (before `/metrics` renders).
/// `tenancy_database_server_up`, `_latency_seconds` and `_tenants`, by server.
fn record_servers(tenancy: &Tenancy, servers: &[crate::tenancy::isolation::ServerCheck]) {
    tenancy.metrics.record(|| {
        for check in servers {
            let server = check.server.clone();
            ::metrics::gauge!("tenancy_database_server_up", "server" => server.clone())
                .set(f64::from(u8::from(check.status == "up")));
            ::metrics::gauge!("tenancy_database_server_latency_seconds", "server" => server.clone())
                .set(check.latency_ms / 1000.0);
            if let Some(tenants) = check.tenants {
                ::metrics::gauge!("tenancy_database_server_tenants", "server" => server)
                    .set(tenants as f64);
            }
        }
    });
}

fn record_state(tenancy: &Tenancy, tenants_by_status: Option<&[(String, i64)]>) {
    let connections = tenancy.connection_stats();
    let cache = tenancy.cache_stats();
    tenancy.metrics.record(|| {
        for (pool, stats) in [("tenant", &connections.tenant), ("control", &connections.control)] {
            for (state, value) in [
                ("open", stats.open_connections),
                ("idle", stats.idle_connections),
                ("in_use", stats.in_use),
                ("waiting", stats.waiting),
                ("max", stats.max_connections),
            ] {
                ::metrics::gauge!("tenancy_pool_connections", "pool" => pool, "state" => state)
                    .set(f64::from(value));
            }
            ::metrics::counter!("tenancy_pool_connections_opened_total", "pool" => pool)
                .absolute(stats.opened);
            for (kind, value) in [("reused", stats.reused), ("rescoped", stats.rescoped)] {
                ::metrics::counter!("tenancy_pool_checkouts_total", "pool" => pool, "kind" => kind)
                    .absolute(value);
            }
            ::metrics::counter!("tenancy_pool_evictions_total", "pool" => pool)
                .absolute(stats.evicted);
            ::metrics::counter!("tenancy_pool_waits_total", "pool" => pool).absolute(stats.waited);
            for (kind, value) in &stats.errors {
                ::metrics::counter!("tenancy_database_errors_total", "pool" => pool, "kind" => *kind)
                    .absolute(*value);
            }
        }
        ::metrics::counter!("tenancy_rate_limited_total").absolute(tenancy.rate.limited());
        // In this process: actix-http answers them before any service sees them.
        ::metrics::counter!("http_malformed_requests_total")
            .absolute(crate::telemetry::malformed_requests());
        ::metrics::gauge!("tenancy_pool_degraded")
            .set(f64::from(u8::from(connections.degraded.is_some())));
        for (result, value) in [("hit", cache.hits), ("miss", cache.lookups)] {
            ::metrics::counter!("tenancy_cache_requests_total", "level" => "local", "result" => result)
                .absolute(value);
        }
        ::metrics::counter!("tenancy_registry_identifier_reads_total")
            .absolute(cache.identifier_reads);
        ::metrics::counter!("tenancy_cache_changes_total").absolute(cache.changes);
        ::metrics::gauge!("tenancy_cache_entries", "level" => "local").set(cache.entries as f64);
        ::metrics::gauge!("tenancy_cache_watching").set(f64::from(u8::from(cache.watching)));
{%- if redis_cache %}
        let shared = tenancy.shared_cache_stats();
        for (result, value) in [("hit", shared.hits), ("miss", shared.misses)] {
            ::metrics::counter!("tenancy_cache_requests_total", "level" => "shared", "result" => result)
                .absolute(value);
        }
        for (kind, value) in &shared.errors {
            ::metrics::counter!("tenancy_redis_errors_total", "kind" => *kind).absolute(*value);
        }
        ::metrics::gauge!("tenancy_redis_up").set(f64::from(u8::from(shared.degraded.is_none())));
{%- endif %}
        if let Some(counts) = tenants_by_status {
            for status in crate::domain::TenantStatus::ALL {
                let count = counts
                    .iter()
                    .find(|(s, _)| s == status.as_str())
                    .map_or(0, |(_, n)| *n);
                ::metrics::gauge!("tenancy_tenants", "status" => status.as_str()).set(count as f64);
            }
        }
        ::metrics::gauge!("tenancy_registry_up").set(f64::from(u8::from(tenants_by_status.is_some())));
    });
}
