//! Workers: each claims one job at a time (the tenant served least recently first), runs
//! it on a connection scoped to the job's tenant while renewing its lease, and records
//! how it ended. `serve` starts `TENANCY_JOBS_WORKERS` of them; `worker` runs only them.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::store::{self, JobRecord};
use super::{JobError, JobsSettings, Kinds, Queue};
use crate::domain::{Maintenance, TenantIdentifier};

/// Running workers; [`Workers::stop`] ends them gracefully.
pub struct Workers {
    stop: CancellationToken,
    running: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `settings.workers` workers on the database runtime. On `stop`, each one
    /// finishes the job in hand within `grace`, or gives it back to the queue.
    pub fn start(queue: Queue, kinds: Kinds, settings: JobsSettings, grace: Duration) -> Self {
        let stop = CancellationToken::new();
        let runtime = queue.tenancy().context().runtime.clone();
        let running = (0..settings.workers)
            .map(|n| {
                let worker = Worker {
                    queue: queue.clone(),
                    kinds: kinds.clone(),
                    settings: settings.clone(),
                    stop: stop.clone(),
                    grace,
                    // One worker per process keeps the queue tidy.
                    tidies: n == 0,
                };
                runtime.spawn(worker.run())
            })
            .collect();
        Self { stop, running }
    }

    /// Stops taking jobs when `signal` resolves (SIGTERM, say), without waiting: the jobs
    /// in hand get their grace while the HTTP server drains, not after.
    pub fn stop_on(&self, signal: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            signal.await;
            stop.cancel();
        });
    }

    /// Stops taking jobs, and waits for the jobs in hand to end or be given back.
    pub async fn stop(self) {
        self.stop.cancel();
        for worker in self.running {
            if let Err(error) = worker.await {
                tracing::error!(%error, "a job worker ended abnormally");
            }
        }
    }
}

struct Worker {
    queue: Queue,
    kinds: Kinds,
    settings: JobsSettings,
    stop: CancellationToken,
    grace: Duration,
    tidies: bool,
}

/// How an attempt ended.
enum Ended {
    Ran(Result<serde_json::Value, JobError>),
    /// Not run, or stopped in the middle: the job goes back to the queue.
    GivenBack(&'static str),
}

impl Worker {
    async fn run(self) {
        let mut tidied: Option<Instant> = None;
        while !self.stop.is_cancelled() {
            if self.tidies && tidied.is_none_or(|at| at.elapsed() >= self.settings.poll_interval) {
                self.tidy().await;
                tidied = Some(Instant::now());
            }
            match self.claim().await {
                Ok(Some(job)) => self.attempt(job).await,
                Ok(None) => {
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = self.queue.enqueued_or(self.settings.poll_interval) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not claim a job");
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(self.settings.poll_interval) => {}
                    }
                }
            }
        }
    }

    async fn claim(&self) -> Result<Option<(JobRecord, String)>, JobError> {
        let mut conn = self.queue.tenancy().control.get().await?;
        let claimed = store::claim(&mut conn, self.settings.lease).await?;
        conn.finish(true).await?;
        Ok(claimed)
    }

    async fn tidy(&self) {
        let tidied = async {
            let mut conn = self.queue.tenancy().control.get().await?;
            let expired = store::tidy(&mut conn, self.settings.retention).await?;
            conn.finish(true).await?;
            Ok::<_, JobError>(expired)
        };
        match tidied.await {
            Ok(0) => {}
            Ok(expired) => {
                tracing::warn!(jobs = expired, "jobs whose worker stopped are queued again");
            }
            Err(error) => tracing::warn!(%error, "could not tidy the job queue"),
        }
    }

    /// Runs one claimed job and records how it ended.
    async fn attempt(&self, (job, identifier): (JobRecord, String)) {
        let Some(lease) = job.lease else {
            return;
        };
        let started = Instant::now();
        let span = tracing::info_span!("job", job.id = job.id, job.kind = %job.kind, tenant.id = %job.tenant_id, tenant.identifier = %identifier, attempt = job.attempts);
        let ended = self.run_job(&job, &identifier, lease).await;
        let _entered = span.enter();
        let recorded = async {
            let mut conn = self.queue.tenancy().control.get().await?;
            let outcome = match &ended {
                Ended::Ran(Ok(result)) => store::complete(&mut conn, job.id, lease, result)
                    .await?
                    .then_some("done"),
                Ended::Ran(Err(error)) => {
                    let delay = backoff(self.settings.retry_backoff, job.attempts, jitter());
                    store::fail(&mut conn, job.id, lease, &error.to_string(), delay)
                        .await?
                        .map(|state| state.as_str())
                }
                Ended::GivenBack(_) => store::release(&mut conn, job.id, lease)
                    .await?
                    .then_some("queued"),
            };
            conn.finish(true).await?;
            Ok::<_, JobError>(outcome)
        };
        let recorded = recorded.await;
        let took = started.elapsed();
        let ms = took.as_millis();
        if let (Ok(Some(state)), Ended::Ran(_)) = (&recorded, &ended) {
            self.queue
                .tenancy()
                .metrics
                .job_attempt(&job.queue, state, took);
        }
        match (recorded, &ended) {
            (Ok(Some(state)), Ended::Ran(Ok(_))) => tracing::info!(ms, state, "job done"),
            (Ok(Some(state)), Ended::Ran(Err(error))) => {
                tracing::warn!(ms, state, %error, "job attempt failed");
            }
            (Ok(Some(_)), Ended::GivenBack(why)) => tracing::info!(why, "job given back"),
            (Ok(None), _) => tracing::warn!(
                ms,
                "the job's lease expired while it ran: it was queued again, this attempt is \
                 not recorded (raise TENANCY_JOBS_LEASE?)"
            ),
            (Err(error), _) => {
                tracing::error!(%error, "how the job ended could not be recorded: it runs again once its lease expires")
            }
        }
    }

    async fn run_job(&self, job: &JobRecord, identifier: &str, lease: uuid::Uuid) -> Ended {
        let tenancy = self.queue.tenancy();
        // The claim checked the tenant; it may have changed since.
        let tenant = match TenantIdentifier::parse(identifier) {
            Ok(identifier) => tenancy.active_tenant(&identifier).await,
            Err(_) => return Ended::GivenBack("the tenant's identifier cannot be read"),
        };
        let tenant = match tenant {
            Ok(tenant) if tenant.id == job.tenant_id && tenant.maintenance == Maintenance::Off => {
                tenant
            }
            Ok(_) | Err(_) => return Ended::GivenBack("the tenant is not served now"),
        };
        let Some(runner) = self.kinds.get(&job.kind) else {
            return Ended::Ran(Err(JobError::Failed(format!(
                "no job kind '{}' in this build",
                job.kind
            ))));
        };
        let mut conn = match tenancy.tenant_connection(&tenant).await {
            Ok(conn) => conn,
            Err(error) => return Ended::Ran(Err(error.into())),
        };
        let payload = job.payload.clone();
        let mut run = AssertUnwindSafe(runner(payload, &mut conn)).catch_unwind();
        let mut renew = tokio::time::interval(self.settings.lease / 3);
        renew.tick().await;
        let mut deadline: Option<tokio::time::Instant> = None;
        let too_long = tokio::time::sleep(self.settings.timeout);
        tokio::pin!(too_long);
        let result = loop {
            let until_deadline = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut run => break result,
                _ = renew.tick() => self.renew(job.id, lease).await,
                () = self.stop.cancelled(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + self.grace);
                }
                () = until_deadline => {
                    drop(run);
                    drop(conn);
                    return Ended::GivenBack("the worker stopped before the job ended");
                }
                // Its connection goes with it, and its transaction with that.
                () = &mut too_long => {
                    drop(run);
                    drop(conn);
                    return Ended::Ran(Err(JobError::Failed(format!(
                        "the attempt did not end within TENANCY_JOBS_TIMEOUT ({} s)",
                        self.settings.timeout.as_secs()
                    ))));
                }
            }
        };
        drop(run);
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(JobError::Failed("the job panicked".into())),
        };
        // Behind a transaction pooler the job's work is one transaction: commit it on
        // success, roll it back on failure.
        let finished = conn.finish(result.is_ok()).await;
        Ended::Ran(match (result, finished) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(error)) => Err(error.into()),
            (Err(error), _) => Err(error),
        })
    }

    async fn renew(&self, id: i64, lease: uuid::Uuid) {
        let renewed = async {
            let mut conn = self.queue.tenancy().control.get().await?;
            let renewed = store::renew(&mut conn, id, lease, self.settings.lease).await?;
            conn.finish(true).await?;
            Ok::<_, JobError>(renewed)
        };
        match renewed.await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(job.id = id, "the job's lease was lost while it ran"),
            Err(error) => tracing::warn!(job.id = id, %error, "could not renew a job's lease"),
        }
    }
}

/// The delay before the retry that follows attempt `attempts` (1 for the first): `base`
/// doubled with each attempt, at most an hour, then scaled by `jitter` (in 0.5..=1.0) so
/// that jobs that failed together do not all come back together.
pub fn backoff(base: Duration, attempts: i32, jitter: f64) -> Duration {
    const CAP: Duration = Duration::from_secs(3600);
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(31);
    let delay = base.saturating_mul(1 << doublings).min(CAP);
    delay.mul_f64(jitter.clamp(0.5, 1.0))
}

/// A random factor in 0.5..1.0 (from the random bits of a v4 UUID).
fn jitter() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    0.5 + (bits as f64 / u64::MAX as f64) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_with_each_attempt_up_to_an_hour() {
        let base = Duration::from_secs(1);
        let delays: Vec<u64> = (1..=5).map(|n| backoff(base, n, 1.0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16]);
        assert_eq!(backoff(base, 13, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(base, 100, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(base, 0, 1.0), base);
    }

    #[test]
    fn jitter_keeps_the_delay_between_half_and_all_of_it() {
        let base = Duration::from_secs(8);
        assert_eq!(backoff(base, 1, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(base, 1, 0.1), Duration::from_secs(4));
        assert_eq!(backoff(base, 1, 7.0), base);
        for _ in 0..1000 {
            let factor = jitter();
            assert!((0.5..=1.0).contains(&factor), "{factor}");
        }
    }
}
