//! Background jobs that always know their tenant.
//!
//! A job is a value of a type implementing [`Job`], stored in PostgreSQL
//! (`tenancy.jobs`) with the tenant it belongs to: it can only be enqueued for a tenant
//! ([`TenantJobs`] in a handler, bound to the request's tenant, or [`Queue::enqueue`]
//! with a `Tenant`). A worker ([`worker`]) runs it with a [`TenantConnection`] scoped to
//! that tenant, the same type handlers get, so job code cannot query unscoped.
//!
//! Delivery is at least once: an attempt that fails is retried after a backoff, and one
//! whose worker stopped is retried once its lease expires; after its last attempt a job
//! is dead, with its last error, until an operator retries it. Jobs of a suspended,
//! deleted or maintained tenant are held; destroying a tenant removes them.

pub mod settings;
pub mod store;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use chrono::{DateTime, Utc};
use futures_util::future::{BoxFuture, LocalBoxFuture};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::db::TenantConnection;
use crate::db::pool::PoolError;
use crate::domain::{Tenant, TenantIdentifier};
use crate::error::AppError;
use crate::tenancy::Tenancy;
use crate::tenancy::audit::{Actor, Operation};
use crate::tenancy::lifecycle::{LifecycleError, OfTenant};
pub use settings::JobsSettings;
pub use store::{JobRecord, JobState};

/// Work done in the background for one tenant.
///
/// Its fields are the job's payload (JSON, stored with the job: never a secret). `run`
/// may run more than once for one job (at-least-once delivery): make it idempotent, or
/// safe to repeat.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The name stored with each job of this type; keep it once jobs were enqueued.
    const KIND: &'static str;
    /// The queue it is counted in (`/metrics`).
    const QUEUE: &'static str = "default";
    /// Attempts before it is dead.
    const MAX_ATTEMPTS: i32 = 5;

    /// Does the work on the tenant's connection; what it returns is stored as the job's
    /// result.
    fn run(
        self,
        conn: &mut TenantConnection,
    ) -> impl Future<Output = Result<serde_json::Value, JobError>> + Send;
}

/// Why an attempt failed (stored as the job's last error).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("no connection for the tenant: {0}")]
    Pool(#[from] PoolError),
    #[error("{0}")]
    Failed(String),
}

/// What a handler answers when enqueueing or reading a job failed.
impl From<JobError> for AppError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Database(error) => AppError::from(error),
            JobError::Pool(error) => AppError::from(error),
            JobError::Failed(detail) => AppError::internal(detail),
        }
    }
}

/// How a stored job is run: decode its payload, then [`Job::run`].
type Runner = for<'c> fn(
    serde_json::Value,
    &'c mut TenantConnection,
) -> BoxFuture<'c, Result<serde_json::Value, JobError>>;

fn runner<J: Job>(
    payload: serde_json::Value,
    conn: &mut TenantConnection,
) -> BoxFuture<'_, Result<serde_json::Value, JobError>> {
    Box::pin(async move {
        let job: J = serde_json::from_value(payload)
            .map_err(|e| JobError::Failed(format!("the payload is not a {}: {e}", J::KIND)))?;
        job.run(conn).await
    })
}

/// The job types workers run, by [`Job::KIND`] (built in `startup::job_kinds`).
#[derive(Clone, Default)]
pub struct Kinds(HashMap<&'static str, Runner>);

impl Kinds {
    pub fn with<J: Job>(mut self) -> Self {
        self.0.insert(J::KIND, runner::<J>);
        self
    }

    fn get(&self, kind: &str) -> Option<Runner> {
        self.0.get(kind).copied()
    }
}

/// How a job is enqueued, beyond its payload.
#[derive(Debug, Clone, Default)]
pub struct Enqueue {
    /// Enqueueing the same key again for the same tenant returns the first job (while it
    /// is kept: `TENANCY_JOBS_RETENTION_DAYS` after it ended).
    pub idempotency_key: Option<String>,
    /// Not before this (default: now).
    pub run_at: Option<DateTime<Utc>>,
}

/// The queue: enqueues jobs and wakes this process's workers.
#[derive(Clone)]
pub struct Queue {
    tenancy: web::Data<Tenancy>,
}

impl Queue {
    pub fn new(tenancy: web::Data<Tenancy>) -> Self {
        Self { tenancy }
    }

    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }

    /// Enqueues `job` for `tenant`; with an idempotency key already used, the job enqueued
    /// with it first (and `false`: not new).
    pub async fn enqueue<J: Job>(
        &self,
        tenant: &Tenant,
        job: &J,
        options: Enqueue,
    ) -> Result<(JobRecord, bool), JobError> {
        let payload =
            serde_json::to_value(job).map_err(|e| JobError::Failed(format!("payload: {e}")))?;
        let new = store::NewJob {
            tenant_id: tenant.id,
            queue: J::QUEUE,
            kind: J::KIND,
            payload,
            max_attempts: J::MAX_ATTEMPTS,
            run_at: options.run_at,
            idempotency_key: options.idempotency_key,
        };
        let mut conn = self.tenancy.control.get().await?;
        let enqueued = store::insert(&mut conn, new).await?;
        conn.finish(true).await?;
        if enqueued.1 {
            self.tenancy.jobs_enqueued.notify_one();
        }
        Ok(enqueued)
    }

    /// Waits until a job is enqueued in this process, or `timeout` passes.
    async fn enqueued_or(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.tenancy.jobs_enqueued.notified()).await;
    }

    /// `tenant`'s job `id`, if it has it.
    pub async fn get(&self, tenant: &Tenant, id: i64) -> Result<Option<JobRecord>, JobError> {
        let mut conn = self.tenancy.control.get().await?;
        let job = store::get(&mut conn, tenant.id, id).await?;
        conn.finish(true).await?;
        Ok(job)
    }
}

/// What operators do (CLI and admin API), by tenant identifier; retries and
/// cancellations are recorded in the audit trail.
impl Queue {
    /// `identifier`'s jobs, newest first (`state`: only those; `before`: older than this
    /// job id).
    pub async fn jobs_of(
        &self,
        identifier: &TenantIdentifier,
        state: Option<JobState>,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<JobRecord>, LifecycleError> {
        let tenant = self.tenancy.get_tenant(identifier).await?;
        let mut conn = self.tenancy.control.get().await?;
        let jobs = store::list(&mut conn, tenant.id, state, limit, before).await?;
        conn.finish(true).await?;
        Ok(jobs)
    }

    /// Queues a dead or cancelled job again, due now, with all its attempts (a queued one
    /// becomes due now); refused for a job that is running or done.
    pub async fn retry(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
        id: i64,
    ) -> Result<JobRecord, LifecycleError> {
        let run = self.change(identifier, id, Change::Retry);
        let params = serde_json::json!({ "job": id });
        let retried = (self.tenancy)
            .audited(actor, Operation::JobRetry, identifier, params, run)
            .await?;
        self.tenancy.jobs_enqueued.notify_one();
        Ok(retried)
    }

    /// Cancels a queued or dead job; refused for one that is running or has ended.
    pub async fn cancel(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
        id: i64,
    ) -> Result<JobRecord, LifecycleError> {
        let run = self.change(identifier, id, Change::Cancel);
        let params = serde_json::json!({ "job": id });
        (self.tenancy)
            .audited(actor, Operation::JobCancel, identifier, params, run)
            .await
    }

    /// Applies `change` to `identifier`'s job `id`.
    async fn change(
        &self,
        identifier: &TenantIdentifier,
        id: i64,
        change: Change,
    ) -> Result<JobRecord, LifecycleError> {
        let tenant = self.tenancy.get_tenant(identifier).await?;
        let mut conn = self.tenancy.control.get().await?;
        let changed = match change {
            Change::Retry => store::retry(&mut conn, tenant.id, id).await?,
            Change::Cancel => store::cancel(&mut conn, tenant.id, id).await?,
        };
        let found = match changed {
            Some(job) => Ok(job),
            None => Err(store::get(&mut conn, tenant.id, id).await?),
        };
        conn.finish(true).await?;
        let rule = match change {
            Change::Retry => "only a dead, cancelled or queued job is retried",
            Change::Cancel => "only a queued or dead job is cancelled",
        };
        match found {
            Ok(job) => Ok(job),
            Err(Some(job)) => Err(LifecycleError::Conflict(format!(
                "job {id} is {}: {rule}",
                job.state
            ))),
            Err(None) => Err(LifecycleError::NoJob(identifier.clone(), id)),
        }
    }
}

#[derive(Clone, Copy)]
enum Change {
    Retry,
    Cancel,
}

impl OfTenant for JobRecord {
    fn tenant_id(&self) -> uuid::Uuid {
        self.tenant_id
    }
}

/// The jobs of the request's tenant: what a handler takes to enqueue work for later.
/// There is no way from it to another tenant's jobs.
pub struct TenantJobs {
    queue: Queue,
    tenant: Tenant,
}

impl TenantJobs {
    pub async fn enqueue<J: Job>(
        &self,
        job: &J,
        options: Enqueue,
    ) -> Result<(JobRecord, bool), JobError> {
        self.queue.enqueue(&self.tenant, job, options).await
    }

    pub async fn get(&self, id: i64) -> Result<Option<JobRecord>, JobError> {
        self.queue.get(&self.tenant, id).await
    }
}

impl FromRequest for TenantJobs {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let tenant = Tenant::from_request(req, payload);
        let queue = crate::tenancy::extract::tenancy(req).map(Queue::new);
        Box::pin(async move {
            Ok(Self {
                queue: queue?,
                tenant: tenant.await?,
            })
        })
    }
}
