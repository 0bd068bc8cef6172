//! Prometheus metrics, served by `GET /metrics` (`routes::metrics`) in the text format.
//!
//! Events (requests, errors, provisioning, migrations) are recorded as they happen;
//! the state of pools, cache and registry is read when `/metrics` is scraped. Each
//! service has its own recorder (no global one), so several services in one process (the
//! tests) never mix their numbers. Every label has a bounded set of values: routes are
//! route templates (`/api/notes/{id}`, or `unmatched`), and tenants are labels only when
//! `TENANCY_METRICS_TENANT_LABELS=true`, for at most `TENANCY_METRICS_TENANT_LABEL_LIMIT`
//! tenants (the others count as `other`). docs/operations.md lists every metric.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use secrecy::SecretString;

use crate::domain::Tenant;
use crate::error::AppError;
use crate::settings::{ConfigError, Key, Source};
use crate::tenancy::Tenancy;

/// Upper bounds (seconds) of the duration histograms' buckets.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// The label of tenants beyond the limit.
const OTHER_TENANTS: &str = "other";

/// What `/metrics` reads from the configuration.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// When set, `/metrics` needs `Authorization: Bearer <token>` (`TENANCY_METRICS_TOKEN`).
    pub token: Option<SecretString>,
    /// Count requests per tenant too (`TENANCY_METRICS_TENANT_LABELS`).
    pub tenant_labels: bool,
    /// How many tenants get a label of their own (`TENANCY_METRICS_TENANT_LABEL_LIMIT`).
    pub tenant_label_limit: usize,
}

impl MetricsSettings {
    pub const KEYS: &[Key] = &[
        ("metrics_token", None),
        ("metrics_tenant_labels", Some("false")),
        ("metrics_tenant_label_limit", Some("100")),
    ];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        Ok(Self {
            token: src.optional("metrics_token").map(SecretString::from),
            tenant_labels: src.boolean("metrics_tenant_labels")?,
            tenant_label_limit: src.number("metrics_tenant_label_limit", 1, 10_000)?,
        })
    }
}

/// This service's recorder.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Tenants that have a label of their own.
    labelled: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        // Histograms with these buckets; summaries if they were refused (they are not
        // empty, the only reason to refuse them).
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self {
            recorder,
            handle,
            labelled: Mutex::new(HashSet::new()),
        }
    }
}

impl Metrics {
    /// Runs `record` with this service's recorder: the `metrics` macros inside it record
    /// here.
    pub fn record(&self, record: impl FnOnce()) {
        ::metrics::with_local_recorder(&self.recorder, record)
    }

    /// Everything recorded, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// A finished provisioning (`create_tenant`).
    pub fn provisioned(&self, succeeded: bool, took: Duration) {
        let result = if succeeded { "ok" } else { "error" };
        self.record(|| {
            ::metrics::counter!("tenancy_provisioning_total", "result" => result).increment(1);
            ::metrics::histogram!("tenancy_provisioning_duration_seconds", "result" => result)
                .record(took.as_secs_f64());
        });
    }

    /// One tenant's migration (`migrate_all`).
    pub fn migrated(&self, succeeded: bool, took: Duration) {
        let result = if succeeded { "ok" } else { "error" };
        self.record(|| {
            ::metrics::counter!("tenancy_migrations_total", "result" => result).increment(1);
            ::metrics::histogram!("tenancy_migration_duration_seconds", "result" => result)
                .record(took.as_secs_f64());
        });
    }

    /// `identifier`, while fewer than `limit` tenants have a label; else `other`.
    fn tenant_label(&self, identifier: &str, limit: usize) -> String {
        let mut labelled = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        if labelled.contains(identifier) {
            return identifier.to_owned();
        }
        if labelled.len() < limit {
            labelled.insert(identifier.to_owned());
            return identifier.to_owned();
        }
        OTHER_TENANTS.to_owned()
    }
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
    let (route, status, error, tenant) = match &outcome {
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
        ),
        Err(error) => (
            "unmatched".into(),
            error.as_response_error().status_code().as_u16(),
            error.as_error::<AppError>().map(AppError::kind),
            None,
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
            ::metrics::counter!("tenant_requests_total", "tenant" => tenant, "status" => status)
                .increment(1);
        }
    });
    outcome
}

/// Records the state of pools, cache and registry, read now (before `/metrics` renders).
pub fn record_state(tenancy: &Tenancy, tenants_by_status: Option<&[(String, i64)]>) {
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
            for (kind, value) in &stats.errors {
                ::metrics::counter!("tenancy_database_errors_total", "pool" => pool, "kind" => *kind)
                    .absolute(*value);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_tenants_make_at_most_the_limit_of_labels_and_other() {
        let metrics = Metrics::default();
        for i in 0..10_000 {
            let label = metrics.tenant_label(&format!("tenant_{i}"), 100);
            metrics.record(|| {
                ::metrics::counter!("tenant_requests_total", "tenant" => label).increment(1);
            });
        }
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("tenant_requests_total{"))
            .collect();
        assert_eq!(series.len(), 101, "{text}");
        assert!(
            text.contains("tenant_requests_total{tenant=\"other\"} 9900"),
            "{text}"
        );
        // A tenant labelled once keeps its label.
        assert_eq!(metrics.tenant_label("tenant_7", 100), "tenant_7");
    }
}
