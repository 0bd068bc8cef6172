//! The admin API: tenant lifecycle over HTTP, behind `Authorization: Bearer
//! $TENANCY_ADMIN_TOKEN` (compared in constant time). Without a configured token every
//! admin request is refused.
//!
//! | method | path | does |
//! |---|---|---|
//! | POST | /admin/tenants | create `{identifier, name, metadata?{% if isolation == "hybrid" %}, isolation?{% endif %}{% if isolation == "database" %}, server?{% endif %}}` (201; other members: 400) |
//! | GET | /admin/tenants | list |
//! | GET | /admin/tenants/{identifier} | show |
//! | POST | /admin/tenants/{identifier}/suspend | suspend |
//! | POST | /admin/tenants/{identifier}/activate | activate |
//! | DELETE | /admin/tenants/{identifier} | soft delete |
//! | POST | /admin/tenants/{identifier}/destroy | drop storage `{confirm: identifier}` (204) |

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::{Maintenance, TenantIdentifier, TenantLimits};
use crate::error::AppError;
use crate::settings::{ConfigError, Key, Source};
use crate::tenancy::Tenancy;
use crate::tenancy::lifecycle::{LifecycleError, NewTenant};

/// Admin tokens shorter than this are refused.
const MIN_TOKEN_LEN: usize = 32;

/// What the admin API reads from the configuration.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// The bearer token of every admin request (`TENANCY_ADMIN_TOKEN`); none: every admin
    /// request is refused.
    pub token: Option<SecretString>,
}

impl AdminSettings {
    pub const KEYS: &[Key] = &[("admin_token", None)];

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
        Ok(Self { token })
    }
}

/// The admin routes; `settings` are what [`AdminAuth`] checks.
pub fn routes(cfg: &mut web::ServiceConfig, settings: AdminSettings) {
    cfg.app_data(web::Data::new(settings));
    cfg.service(
        web::scope("/admin/tenants")
            .route("", web::post().to(create))
            .route("", web::get().to(list))
            .route("/{identifier}", web::get().to(show))
            .route("/{identifier}", web::delete().to(delete))
            .route("/{identifier}/suspend", web::post().to(suspend))
            .route("/{identifier}/activate", web::post().to(activate))
            .route("/{identifier}/destroy", web::post().to(destroy))
            .route("/{identifier}/limits", web::put().to(set_limits))
            .route("/{identifier}/maintenance", web::put().to(set_maintenance)),
    );
}

/// What the admin API answers when a lifecycle operation fails.
impl From<LifecycleError> for AppError {
    fn from(error: LifecycleError) -> Self {
        match error {
            LifecycleError::NotFound(_) => AppError::NotFound("tenant"),
            LifecycleError::Conflict(m) => AppError::Conflict(m),
            LifecycleError::Invalid(m) => AppError::BadRequest(m),
            LifecycleError::Pool(e) => e.into(),
            LifecycleError::Connect(e) => AppError::Unavailable {
                detail: e.to_string(),
            },
            other => AppError::internal(other),
        }
    }
}

/// Proof that the request carried the admin token.
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = AppError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let authorized = req
            .app_data::<web::Data<AdminSettings>>()
            .and_then(|settings| settings.token.as_ref())
            .is_some_and(|expected| super::bearer_is(req, expected));
        ready(if authorized {
            Ok(AdminAuth)
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
async fn create(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    new: web::Json<NewTenant>,
) -> Result<HttpResponse, AppError> {
    let tenant = tenancy.create_tenant(new.into_inner()).await?;
    tracing::info!(tenant.id = %tenant.id, "tenant created");
    Ok(HttpResponse::Created().json(tenant))
}

async fn list(_: AdminAuth, tenancy: web::Data<Tenancy>) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.list_tenants().await?))
}

async fn show(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.get_tenant(&identifier(&path)?).await?))
}

async fn suspend(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.suspend_tenant(&identifier(&path)?).await?))
}

async fn activate(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.activate_tenant(&identifier(&path)?).await?))
}

/// Replaces the tenant's own limits: a limit left out or `null` is the service's setting.
async fn set_limits(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    limits: web::Json<TenantLimits>,
) -> Result<HttpResponse, AppError> {
    let tenant = tenancy
        .set_limits(&identifier(&path)?, limits.into_inner())
        .await?;
    tracing::info!(tenant.id = %tenant.id, limits = ?tenant.limits, "tenant limits set");
    Ok(HttpResponse::Ok().json(tenant))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceMode {
    mode: Maintenance,
}

/// `{"mode": "read_only"}` makes the tenant refuse writes (503); `{"mode": "off"}` ends it.
async fn set_maintenance(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    body: web::Json<MaintenanceMode>,
) -> Result<HttpResponse, AppError> {
    let tenant = tenancy
        .set_maintenance(&identifier(&path)?, body.mode)
        .await?;
    Ok(HttpResponse::Ok().json(tenant))
}

async fn delete(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(tenancy.delete_tenant(&identifier(&path)?).await?))
}

#[derive(Deserialize)]
struct Confirmation {
    confirm: String,
}

async fn destroy(
    _: AdminAuth,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
    body: Option<web::Json<Confirmation>>,
) -> Result<HttpResponse, AppError> {
    let confirmation = body.map(|b| b.into_inner().confirm).unwrap_or_default();
    tenancy
        .destroy_tenant(&identifier(&path)?, &confirmation)
        .await?;
    Ok(HttpResponse::NoContent().finish())
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
