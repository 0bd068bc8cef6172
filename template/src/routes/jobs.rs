//! The current tenant's background jobs, as its clients follow them (a job enqueued by a
//! handler, such as `POST /api/notes/import`, answers with where to look).

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::AppError;
use crate::jobs::{JobRecord, JobState, TenantJobs};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/jobs/{id}").route(web::get().to(get_job)));
}

/// A job as its tenant's clients see it: where it is, not why an attempt failed (errors
/// can carry internals: operators read them with `jobs list` or the admin API).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    pub id: i64,
    pub kind: String,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    /// When it runs next (queued), or when its last attempt started.
    pub run_at: DateTime<Utc>,
    /// What the job returned, once done.
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<JobRecord> for JobStatus {
    fn from(job: JobRecord) -> Self {
        Self {
            id: job.id,
            kind: job.kind,
            state: job.state,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            run_at: job.run_at,
            result: job.result,
            created_at: job.created_at,
            finished_at: job.finished_at,
        }
    }
}

/// The job, if the request's tenant has it.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "jobs",
    params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, description = "Where the job is", body = JobStatus)),
)]
#[tracing::instrument(skip_all, fields(job.id = *id))]
pub(crate) async fn get_job(
    jobs: TenantJobs,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let job = jobs.get(*id).await?.ok_or(AppError::NotFound("job"))?;
    Ok(HttpResponse::Ok().json(JobStatus::from(job)))
}
