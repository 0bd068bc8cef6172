//! Prometheus metrics: this service's recorder and what `/metrics` reads from the
//! configuration. `routes::metrics` records requests and serves the text format.
//!
//! Events (requests, errors, lifecycle operations) are recorded as they happen;
//! the state of pools, cache and registry is read when `/metrics` is scraped. Each
//! service has its own recorder (no global one), so several services in one process (the
//! tests) never mix their numbers. Every label has a bounded set of values: routes are
//! route templates (`/api/notes/{id}`, or `unmatched`), and tenants are labels only when
//! `TENANCY_METRICS_TENANT_LABELS=true`, for at most `TENANCY_METRICS_TENANT_LABEL_LIMIT`
//! tenants (the others count as `other`). docs/operations.md lists every metric.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use secrecy::SecretString;

use crate::settings::{ConfigError, Key, Source};

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
    /// Job queues seen at a scrape: their gauges go to zero when they empty.
    job_queues: Mutex<HashSet<String>>,
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
            job_queues: Mutex::new(HashSet::new()),
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

    /// A finished lifecycle operation (`create`, `migrate` of one tenant, ...) and how it
    /// ended (`ok`, `refused`, `failed`), as the audit trail records it.
    pub fn operation(&self, operation: &'static str, result: &'static str, took: Duration) {
        self.record(|| {
            ::metrics::counter!("tenancy_operations_total", "operation" => operation, "result" => result)
                .increment(1);
            ::metrics::histogram!("tenancy_operation_duration_seconds", "operation" => operation, "result" => result)
                .record(took.as_secs_f64());
        });
    }

    /// The job queues seen at any scrape, `current` (the queues seen now) added: a queue
    /// that empties keeps its gauges, at zero.
    pub fn job_queues(&self, current: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut queues = self.job_queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.extend(current);
        let mut queues: Vec<String> = queues.iter().cloned().collect();
        queues.sort();
        queues
    }

    /// A job attempt that ended (`done`, `queued` for a retry, `dead`), and how long it ran.
    pub fn job_attempt(&self, queue: &str, result: &'static str, took: Duration) {
        let queue = queue.to_owned();
        self.record(|| {
            ::metrics::counter!("tenancy_job_attempts_total", "queue" => queue.clone(), "result" => result)
                .increment(1);
            ::metrics::histogram!("tenancy_job_duration_seconds", "queue" => queue)
                .record(took.as_secs_f64());
        });
    }

    /// `identifier`, while fewer than `limit` tenants have a label; else `other`.
    pub fn tenant_label(&self, identifier: &str, limit: usize) -> String {
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
