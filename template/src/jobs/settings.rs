//! What the job workers read from the configuration.

use std::time::Duration;

use crate::settings::{ConfigError, Key, Source};

#[derive(Debug, Clone)]
pub struct JobsSettings {
    /// Jobs one process runs at once (`TENANCY_JOBS_WORKERS`; 0: `serve` runs none, and a
    /// `worker` process must).
    pub workers: usize,
    /// How often an idle worker looks for jobs enqueued by other processes
    /// (`TENANCY_JOBS_POLL_INTERVAL`; a job enqueued by the same process wakes it at once).
    pub poll_interval: Duration,
    /// How long a running job stays its worker's without a renewal
    /// (`TENANCY_JOBS_LEASE`); the worker renews it every third of that while the job
    /// runs, so a job whose worker was killed runs again after at most this long.
    pub lease: Duration,
    /// How long one attempt of a job may run (`TENANCY_JOBS_TIMEOUT`): one that runs
    /// longer is stopped, its work rolled back with its connection, and retried like a
    /// failed one.
    pub timeout: Duration,
    /// The delay before the first retry (`TENANCY_JOBS_RETRY_BACKOFF`, in milliseconds);
    /// it doubles with each attempt, up to an hour, with jitter.
    pub retry_backoff: Duration,
    /// Days done and cancelled jobs are kept (`TENANCY_JOBS_RETENTION_DAYS`); their
    /// idempotency keys hold that long.
    pub retention: Duration,
}

impl JobsSettings {
    pub const KEYS: &'static [Key] = &[
        ("jobs_workers", Some("2")),
        ("jobs_poll_interval", Some("1")),
        ("jobs_lease", Some("60")),
        ("jobs_timeout", Some("600")),
        ("jobs_retry_backoff", Some("1000")),
        ("jobs_retention_days", Some("7")),
    ];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let lease = src.seconds("jobs_lease", 3, 86_400)?;
        Ok(Self {
            workers: src.number("jobs_workers", 0, 256)?,
            poll_interval: src.seconds("jobs_poll_interval", 1, 3600)?,
            lease,
            timeout: src.seconds("jobs_timeout", 1, 86_400)?,
            retry_backoff: Duration::from_millis(src.number("jobs_retry_backoff", 1, 3_600_000)?),
            retention: Duration::from_secs(
                86_400 * src.number::<u64>("jobs_retention_days", 1, 3650)?,
            ),
        })
    }
}
