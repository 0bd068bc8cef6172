//! The admin API: tenant lifecycle over HTTP, behind `Authorization: Bearer
//! $TENANCY_ADMIN_TOKEN` (compared in constant time). Without a configured token every
//! admin request is refused. Every operation is recorded in the audit trail as actor
//! `api:<TENANCY_ADMIN_TOKEN_NAME>`.
//!
//! | method | path | does |
//! |---|---|---|
//! | POST | /admin/tenants | create `{identifier, name, metadata?{% if isolation == "hybrid" %}, isolation?{% endif %}, server?}` (201; other members: 400{% if tenant_databases %}; 202 and `provisioning` without the owner's URL: `migrate` creates its database{% else %}; 202 and `provisioning` for another server without the owner's URL: `migrate` creates its schema there{% endif %}) |
//! | GET | /admin/tenants | list |
//! | GET | /admin/tenants/{identifier} | show |
//! | POST | /admin/tenants/{identifier}/suspend | suspend |
//! | POST | /admin/tenants/{identifier}/activate | activate |
//! | DELETE | /admin/tenants/{identifier} | soft delete |
//! | POST | /admin/tenants/{identifier}/destroy | drop storage `{confirm: identifier}` (204) |
//! | PUT | /admin/tenants/{identifier}/limits | set its own limits |
//! | PUT | /admin/tenants/{identifier}/maintenance | `{mode: read_only or off}` |
//! | POST | /admin/tenants/{identifier}/move | move its {% if isolation == "schema" %}schema{% elsif isolation == "rls" %}rows{% else %}database{% endif %} `{to: host:port or null{% if isolation == "hybrid" %}, isolation?{% endif %}}`{% if isolation == "hybrid" %}, or its data one tier up or down (`isolation`){% endif %} (read-only meanwhile; answers when done) |
//! | GET | /admin/tenants/{identifier}/history | audit trail, newest first (`?limit=`, `?before=<id>`) |
//! | GET | /admin/tenants/{identifier}/jobs | background jobs, newest first (`?state=`, `?limit=`, `?before=<id>`) |
//! | POST | /admin/tenants/{identifier}/jobs/{id}/retry | queue a dead or cancelled job again |
//! | POST | /admin/tenants/{identifier}/jobs/{id}/cancel | cancel a queued or dead job |

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::{Maintenance, Tenant, TenantIdentifier, TenantLimits, TenantStatus};
use crate::error::AppError;
use crate::jobs::{JobRecord, JobState, Queue};
use crate::settings::{ConfigError, Key, Source};
use crate::tenancy::Tenancy;
use crate::tenancy::audit::Actor;
use crate::tenancy::lifecycle::{LifecycleError, NewTenant};

use super::Object;

/// Admin tokens shorter than this are refused.
const MIN_TOKEN_LEN: usize = 32;

/// What the admin API reads from the configuration.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// The bearer token of every admin request (`TENANCY_ADMIN_TOKEN`); none: every admin
    /// request is refused.
    pub token: Option<SecretString>,
    /// What the audit trail calls that token's holder (`TENANCY_ADMIN_TOKEN_NAME`).
    pub token_name: String,
}

impl AdminSettings {
    pub const KEYS: &[Key] = &[("admin_token", None), ("admin_token_name", Some("admin"))];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let token = match src.optional("admin_token") {
            Some(token) if token.len() < MIN_TOKEN_LEN => {
                return Err(ConfigError::invalid(
                    "admin_token",
                    format!(
                        "must be at least {MIN_TOKEN_LEN} characters (try: openssl rand -base64 48)"
                    ),
                ));
            }
            token => token.map(SecretString::from),
        };
        let token_name = src.get("admin_token_name");
        let valid = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
        if token_name.is_empty() || token_name.len() > 64 || !token_name.chars().all(valid) {
            return Err(ConfigError::invalid(
                "admin_token_name",
                "must be 1 to 64 letters, digits, '_', '.' or '-'",
            ));
        }
        Ok(Self { token, token_name })
    }
}

/// The admin routes; `settings` are what [`AdminAuth`] checks.
pub fn routes(cfg: &mut web::ServiceConfig, settings: AdminSettings) {
    cfg.app_data(web::Data::new(settings));
    cfg.service(
        // Resources, so that a method a path lacks is answered 405, not 404.
        web::scope("/admin/tenants")
            .service(web::resource("").post(create).get(list))
            .service(web::resource("/{identifier}").get(show).delete(delete))
            .service(web::resource("/{identifier}/suspend").post(suspend))
            .service(web::resource("/{identifier}/activate").post(activate))
            .service(web::resource("/{identifier}/destroy").post(destroy))
            .service(web::resource("/{identifier}/limits").put(set_limits))
            .service(web::resource("/{identifier}/maintenance").put(set_maintenance))
            .service(web::resource("/{identifier}/move").post(move_tenant))
            .service(web::resource("/{identifier}/history").get(history))
            .service(web::resource("/{identifier}/jobs").get(jobs))
            .service(web::resource("/{identifier}/jobs/{id}/retry").post(retry_job))
            .service(web::resource("/{identifier}/jobs/{id}/cancel").post(cancel_job)),
    );
}

/// What the admin API answers when a lifecycle operation fails.
impl From<LifecycleError> for AppError {
    fn from(error: LifecycleError) -> Self {
        match error {
            LifecycleError::NotFound(_) => AppError::NotFound("tenant"),
            LifecycleError::NoJob(..) => AppError::NotFound("job"),
            LifecycleError::Conflict(m) => AppError::Conflict(m),
            // A transaction held the tenant's tables: the move changed nothing (409, with
            // what to do; the audit trail counts it as failed).
            LifecycleError::Busy(m) => AppError::Conflict(m),
            LifecycleError::Invalid(m) => AppError::BadRequest(m),
            LifecycleError::Pool(e) => e.into(),
            LifecycleError::Connect(e) => AppError::Unavailable {
                detail: e.to_string(),
            },
            other => AppError::internal(other),
        }
    }
}

/// Proof that the request carried the admin token; who it acts as.
pub struct AdminAuth(Actor);

impl FromRequest for AdminAuth {
    type Error = AppError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let authorized = req
            .app_data::<web::Data<AdminSettings>>()
            .filter(|settings| {
                settings
                    .token
                    .as_ref()
                    .is_some_and(|expected| super::bearer_is(req, expected))
            });
        ready(if let Some(settings) = authorized {
            Ok(AdminAuth(Actor::api(&settings.token_name)))
        } else {
            Err(AppError::Unauthorized {
                detail: "missing or wrong admin token".into(),
            })
        })
    }
}

/// A path identifier; malformed ones get the same 404 as unknown ones.
fn identifier(raw: &str) -> Result<TenantIdentifier, AppError> {
    TenantIdentifier::parse(raw).map_err(|_| AppError::NotFound("tenant"))
}

#[tracing::instrument(skip_all, fields(tenant.identifier = %new.identifier))]
#[utoipa::path(
    post,
    path = "/admin/tenants",
    tag = "admin",
    request_body = NewTenant,
    responses(
        (status = 201, description = "Created, `active`", body = Tenant),
        (status = 202, description = "Registered, `provisioning`: `migrate` creates its storage (it needs the owner's rights)", body = Tenant),
        (status = 409, description = "The identifier is taken, quarantined, or the tenant limit is reached", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
pub(crate) async fn create(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    Object(new): Object<NewTenant>,
) -> Result<HttpResponse, AppError> {
    let tenant = tenancy.create_tenant(&actor, new).await?;
    tracing::info!(tenant.id = %tenant.id, status = %tenant.status, "tenant created");
    if tenant.status == TenantStatus::Provisioning {
        // Registered; its storage takes the owner's rights, which `migrate` holds.
        return Ok(HttpResponse::Accepted().json(tenant));
    }
    Ok(HttpResponse::Created().json(tenant))
}

#[utoipa::path(
    get,
    path = "/admin/tenants",
    tag = "admin",
    responses((status = 200, description = "Every tenant, deleted ones too; `metadata` is `null` where the registry holds one that cannot be decoded", body = Vec<Tenant>)),
    security(("admin_token" = [])),
)]
pub(crate) async fn list(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.list_tenants().await?))
}

#[utoipa::path(
    get,
    path = "/admin/tenants/{identifier}",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier")),
    responses((status = 200, description = "The tenant", body = Tenant)),
    security(("admin_token" = [])),
)]
pub(crate) async fn show(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.get_tenant(&identifier(&path)?).await?))
}

#[utoipa::path(
    post,
    path = "/admin/tenants/{identifier}/suspend",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier")),
    responses(
        (status = 200, description = "The tenant, `suspended`: its requests get 403", body = Tenant),
        (status = 409, description = "Not in a status it can be suspended from", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
pub(crate) async fn suspend(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.suspend_tenant(&actor, &identifier(&path)?).await?))
}

#[utoipa::path(
    post,
    path = "/admin/tenants/{identifier}/activate",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier")),
    responses(
        (status = 200, description = "The tenant, `active`", body = Tenant),
        (status = 409, description = "Not in a status it can be activated from", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
pub(crate) async fn activate(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.activate_tenant(&actor, &identifier(&path)?).await?))
}

/// Replaces the tenant's own limits: a limit left out or `null` is the service's setting.
#[utoipa::path(
    put,
    path = "/admin/tenants/{identifier}/limits",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier")),
    request_body = TenantLimits,
    responses((status = 200, description = "The tenant with its new limits", body = Tenant)),
    security(("admin_token" = [])),
)]
pub(crate) async fn set_limits(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    Object(limits): Object<TenantLimits>,
) -> Result<HttpResponse, AppError> {
    let tenant = tenancy
        .set_limits(&actor, &identifier(&path)?, limits)
        .await?;
    tracing::info!(tenant.id = %tenant.id, limits = ?tenant.limits, "tenant limits set");
    Ok(HttpResponse::Ok().json(tenant))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MaintenanceMode {
    mode: OperatorMaintenance,
}

/// What an operator may set (`migrating` is `migrate`'s own).
#[derive(Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OperatorMaintenance {
    ReadOnly,
    Off,
}

impl From<OperatorMaintenance> for Maintenance {
    fn from(mode: OperatorMaintenance) -> Self {
        match mode {
            OperatorMaintenance::ReadOnly => Maintenance::ReadOnly,
            OperatorMaintenance::Off => Maintenance::Off,
        }
    }
}

/// `{"mode": "read_only"}` makes the tenant refuse writes (503); `{"mode": "off"}` ends it.
#[utoipa::path(
    put,
    path = "/admin/tenants/{identifier}/maintenance",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier")),
    request_body = MaintenanceMode,
    responses((status = 200, description = "The tenant", body = Tenant)),
    security(("admin_token" = [])),
)]
pub(crate) async fn set_maintenance(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    Object(body): Object<MaintenanceMode>,
) -> Result<HttpResponse, AppError> {
    let tenant = tenancy
        .set_maintenance(&actor, &identifier(&path)?, body.mode.into())
        .await?;
    Ok(HttpResponse::Ok().json(tenant))
}

/// Where to move a tenant's data.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveTo {
    /// A server of `TENANCY_DATABASE_SERVERS` (`host[:port]`); `null`: the default server.
    #[schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?$", max_length = 253)]
    to: Option<crate::tenancy::isolation::ServerAddress>,
{%- if isolation == "hybrid" %}
    /// The tier to move the tenant's data to, one up or down: `schema` (from `rls` or
    /// `database`), `rls` (from `schema`) or `database` (from `schema`; its database on
    /// `to`, `null`: where `TENANCY_DATABASE_PLACEMENT` says); `null`: its database moves
    /// to `to`.
    #[serde(default)]
    #[schema(schema_with = crate::tenancy::isolation::tier_schema)]
    isolation: Option<crate::domain::Isolation>,
{%- endif %}
}

/// Moves the tenant's {% if isolation == "schema" %}schema{% elsif isolation == "rls" %}rows{% else %}database{% endif %} to another server{% if isolation == "hybrid" %}, or its data one tier up or
/// down (`isolation`),{% endif %} or resumes its interrupted move: read-only meanwhile, answered
/// when it is done.
#[utoipa::path(
    post,
    path = "/admin/tenants/{identifier}/move",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier")),
    request_body = MoveTo,
    responses(
        (status = 200, description = "Moved: what was copied, and how long the tenant was read-only", body = crate::tenancy::moves::Moved),
        (status = 409, description = "Already there{% if isolation == "hybrid" %} (or a tier not one step away){% endif %}, another move under way, {% if isolation == "schema" %}a schema of that name{% elsif isolation == "rls" %}rows of the tenant, or shared tables that cannot seal it,{% else %}a database of that name{% endif %} on the target, or the tenant's tables held by a transaction that did not end in time (nothing changed: try again)", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
pub(crate) async fn move_tenant(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    Object(body): Object<MoveTo>,
) -> Result<HttpResponse, AppError> {
{%- if isolation == "hybrid" %}
    if let Some(tier) = body.isolation {
        let moved = tenancy
            .change_tier(&actor, &identifier(&path)?, tier, body.to, |_| {})
            .await?;
        return Ok(HttpResponse::Ok().json(moved));
    }
{%- endif %}
    let moved = tenancy
        .move_tenant(&actor, &identifier(&path)?, body.to, |_| {})
        .await?;
    Ok(HttpResponse::Ok().json(moved))
}

#[utoipa::path(
    delete,
    path = "/admin/tenants/{identifier}",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier")),
    responses(
        (status = 200, description = "The tenant, `deleted` (soft: its data stays until destroyed)", body = Tenant),
        (status = 409, description = "Already deleted, or a move holds it in two places until it is finished", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
pub(crate) async fn delete(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.delete_tenant(&actor, &identifier(&path)?).await?))
}

/// The identifier again, so that no request destroys a tenant by mistake.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Confirmation {
    confirm: String,
}

#[utoipa::path(
    post,
    path = "/admin/tenants/{identifier}/destroy",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier")),
    request_body(content = Confirmation, description = "`confirm` repeats the identifier"),
    responses(
        (status = 204, description = "Its storage and registry row are gone; the identifier is quarantined"),
        (status = 409, description = "Not deleted first, or a move holds it in two places until it is finished", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
pub(crate) async fn destroy(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    body: Option<Object<Confirmation>>,
) -> Result<HttpResponse, AppError> {
    let confirmation = body.map(|Object(b)| b.confirm).unwrap_or_default();
    tenancy
        .destroy_tenant(&actor, &identifier(&path)?, &confirmation)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryPage {
    /// Entries at most (1 to 1,000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only entries older than this one (the `id` of the last entry of a page).
    before: Option<i64>,
}

/// The audit trail of an identifier (every tenant that had it, destroyed ones too),
/// newest first: an identifier without entries gives an empty list.
#[utoipa::path(
    get,
    path = "/admin/tenants/{identifier}/history",
    tag = "admin",
    params(("identifier" = String, Path, description = "The identifier"), HistoryPage),
    responses((status = 200, description = "The entries, newest first", body = Vec<crate::tenancy::audit::Entry>)),
    security(("admin_token" = [])),
)]
pub(crate) async fn history(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    page: web::Query<HistoryPage>,
) -> Result<HttpResponse, AppError> {
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::BadRequest("limit must be 1 to 1000".into()));
    }
    let entries = tenancy
        .history(&identifier(&path)?, limit, page.before)
        .await?;
    Ok(HttpResponse::Ok().json(entries))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobsPage {
    /// Only jobs in this state.
    state: Option<JobState>,
    /// Jobs at most (1 to 1,000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only jobs older than this one (the `id` of the last job of a page).
    before: Option<i64>,
}

/// A tenant's background jobs, newest first.
#[utoipa::path(
    get,
    path = "/admin/tenants/{identifier}/jobs",
    tag = "admin",
    params(("identifier" = String, Path, description = "The tenant's identifier"), JobsPage),
    responses((status = 200, description = "The jobs, newest first", body = Vec<JobRecord>)),
    security(("admin_token" = [])),
)]
pub(crate) async fn jobs(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    page: web::Query<JobsPage>,
) -> Result<HttpResponse, AppError> {
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::BadRequest("limit must be 1 to 1000".into()));
    }
    let jobs = Queue::new(tenancy)
        .jobs_of(&identifier(&path)?, page.state, limit, page.before)
        .await?;
    Ok(HttpResponse::Ok().json(jobs))
}

#[utoipa::path(
    post,
    path = "/admin/tenants/{identifier}/jobs/{id}/retry",
    tag = "admin",
    params(
        ("identifier" = String, Path, description = "The tenant's identifier"),
        ("id" = i64, Path, description = "The job's id"),
    ),
    responses(
        (status = 200, description = "The job, queued again", body = JobRecord),
        (status = 409, description = "Not dead or cancelled", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
pub(crate) async fn retry_job(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant, id) = path.into_inner();
    let job = Queue::new(tenancy)
        .retry(&actor, &identifier(&tenant)?, id)
        .await?;
    Ok(HttpResponse::Ok().json(job))
}

#[utoipa::path(
    post,
    path = "/admin/tenants/{identifier}/jobs/{id}/cancel",
    tag = "admin",
    params(
        ("identifier" = String, Path, description = "The tenant's identifier"),
        ("id" = i64, Path, description = "The job's id"),
    ),
    responses(
        (status = 200, description = "The job, cancelled", body = JobRecord),
        (status = 409, description = "Not queued or dead", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
pub(crate) async fn cancel_job(
    AdminAuth(actor): AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, AppError> {
    let (tenant, id) = path.into_inner();
    let job = Queue::new(tenancy)
        .cancel(&actor, &identifier(&tenant)?, id)
        .await?;
    Ok(HttpResponse::Ok().json(job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_token_is_refused_without_being_shown() {
        let read =
            |pairs: &[(&str, &str)]| AdminSettings::read(&Source::of(pairs, AdminSettings::KEYS));
        assert!(read(&[]).unwrap().token.is_none());
        let err = read(&[("TENANCY_ADMIN_TOKEN", "short-token")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("TENANCY_ADMIN_TOKEN:"), "{err}");
        assert!(!err.contains("short-token"), "{err}");
    }
}
