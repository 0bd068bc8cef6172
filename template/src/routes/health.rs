//! Health endpoints for load balancers and orchestrators; never tenant-scoped (they are
//! outside the `/api` scope that the tenant middleware wraps).
//!
//! - `/health`: overall status, database check with latency, each server tenants
//!   may be on (`checks.servers`: up or down, latency, tenants recorded there), tenant counts, connection
//!   usage, tenant cache; 200 when `healthy` or `degraded` (serving, but with fewer
//!   connections than configured because PostgreSQL refused more, without hearing of
//!   tenant changes made elsewhere, with a server of tenants down (its tenants get
//!   503, the others are served), or with `tenants.undecodable` registry rows, whose
//!   metadata was written by hand in SQL and cannot be read back; the reason is given),
//!   503 otherwise.
//! - `/health/live`: the process answers (liveness).
//! - `/health/ready`: the database answers (readiness).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::domain::TenantStatus;
use crate::error::ErrorDetails;
use crate::tenancy::Tenancy;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Resources, so that another method is answered 405, not 404.
    cfg.service(web::resource("/health").get(health))
        .service(web::resource("/health/live").get(live))
        .service(web::resource("/health/ready").get(ready));
}

struct DatabaseCheck {
    latency_ms: f64,
    tenants: Result<Vec<(String, i64)>, String>,
}

async fn check_database(tenancy: &Tenancy) -> DatabaseCheck {
    let started = Instant::now();
    let tenants = match tokio::time::timeout(CHECK_TIMEOUT, tenancy.tenant_counts()).await {
        Ok(counts) => counts.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    DatabaseCheck {
        latency_ms: (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        tenants,
    }
}

/// Overall status, database check with latency, tenant counts, connections, cache.
#[utoipa::path(
    get,
    path = "/health",
    tag = "service",
    responses(
        (status = 200, description = "`healthy` or `degraded` (serving; the reason is given)", body = Object),
        (status = 503, description = "`unhealthy`: the database is down or refuses connections", body = Object),
    ),
)]
pub(crate) async fn health(
    tenancy: web::Data<Tenancy>,
    details: web::Data<ErrorDetails>,
) -> HttpResponse {
    let servers = tenancy
        .servers()
        .check_all(tenancy.context(), CHECK_TIMEOUT);
    let (check, servers) = tokio::join!(check_database(&tenancy), servers);
    let connections = tenancy.connection_stats();
    let (healthy, database, tenants) = match &check.tenants {
        Ok(counts) => {
            let mut by_status: BTreeMap<&str, i64> =
                TenantStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
            for (status, count) in counts {
                if let Some(slot) = by_status.get_mut(status.as_str()) {
                    *slot = *count;
                }
            }
            let total: i64 = by_status.values().sum();
            let mut tenants = json!({"total": total, "by_status": by_status});
            let undecodable = tenancy.undecodable_tenants();
            if undecodable > 0 {
                tenants["undecodable"] = json!(undecodable);
            }
            (
                true,
                json!({"status": "up", "latency_ms": check.latency_ms}),
                tenants,
            )
        }
        Err(error) => {
            tracing::warn!(error = %error, "health check: database unavailable");
            let mut database = json!({"status": "down", "latency_ms": check.latency_ms});
            if details.0 {
                database["error"] = json!(error);
            }
            (false, database, serde_json::Value::Null)
        }
    };
    let (cache, cache_degraded) = cache_check(&tenancy);
    // A registry row that cannot be decoded wants an operator; its tenant still serves.
    let degraded =
        connections.degraded.is_some() || cache_degraded || tenancy.undecodable_tenants() > 0;
    // A server that is down fails its tenants alone: the others are served.
    let degraded = degraded || servers.iter().any(|s| s.status == "down");
    let servers: Vec<serde_json::Value> = servers
        .into_iter()
        .map(|server| {
            let mut shown = json!(server);
            if let (true, Some(error)) = (details.0, &server.error) {
                shown["error"] = json!(error);
            }
            shown
        })
        .collect();
    let healthy = healthy && connections.refused.is_none();
    let status = match (healthy, degraded) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "healthy",
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "checks": {"database": database, "servers": servers},
        "tenants": tenants,
        "connections": connections,
        "cache": cache,
        "rate_limit": tenancy.rate.stats(),
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The tenant cache's statistics, and whether it is degraded (tenant changes made
/// elsewhere are not heard of{% if redis_cache %}, or the shared level is failing{% endif %}).
fn cache_check(tenancy: &Tenancy) -> (serde_json::Value, bool) {
    let cache = tenancy.cache_stats();
    let mut shown = json!(cache);
    // Polled by choice (a transaction pooler and no URL to listen on), or by necessity.
    let polled = !cache.watching && tenancy.polls_changes();
    if polled {
        shown["changes"] = json!("polled: entries are read again after 0.5 s");
    } else if !cache.watching {
        shown["degraded"] =
            json!("tenant changes made elsewhere are not received: entries are trusted for 1 s");
    }
    let degraded = !(cache.watching || polled);
{%- if redis_cache %}
    let shared = tenancy.shared_cache_stats();
    shown["shared"] = json!(shared);
    let degraded = degraded || shared.degraded.is_some();
{%- endif %}
    (shown, degraded)
}

/// The process answers.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "service",
    responses((status = 200, description = "`{\"status\": \"alive\"}`", body = Object)),
)]
pub(crate) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

/// The database answers.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "service",
    responses(
        (status = 200, description = "Ready", body = Object),
        (status = 503, description = "The database does not answer", body = Object),
    ),
)]
pub(crate) async fn ready(tenancy: web::Data<Tenancy>) -> HttpResponse {
    let ping = tokio::time::timeout(CHECK_TIMEOUT, async {
        let mut conn = tenancy.control.get().await.map_err(|e| e.to_string())?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    match ping {
        Ok(Ok(_)) => HttpResponse::Ok().json(json!({"status": "ready"})),
        _ => HttpResponse::ServiceUnavailable().json(json!({"status": "not ready"})),
    }
}
