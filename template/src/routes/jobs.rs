//! The current tenant's background jobs, as its clients follow them (a job enqueued by a
//! handler, such as `POST /api/notes/import`, answers with where to look).

use actix_web::{HttpResponse, web};

use crate::error::AppError;
use crate::jobs::TenantJobs;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/jobs/{id}").route(web::get().to(get_job)));
}

/// The job, if the request's tenant has it: state, attempts, result or last error.
#[tracing::instrument(skip_all, fields(job.id = *id))]
async fn get_job(jobs: TenantJobs, id: web::Path<i64>) -> Result<HttpResponse, AppError> {
    let job = jobs.get(*id).await?.ok_or(AppError::NotFound("job"))?;
    Ok(HttpResponse::Ok().json(job))
}
