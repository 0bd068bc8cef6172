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
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::domain::TenantIdentifier;
use crate::error::AppError;
use crate::tenancy::Tenancy;
use crate::tenancy::lifecycle::NewTenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin/tenants")
            .route("", web::post().to(create))
            .route("", web::get().to(list))
            .route("/{identifier}", web::get().to(show))
            .route("/{identifier}", web::delete().to(delete))
            .route("/{identifier}/suspend", web::post().to(suspend))
            .route("/{identifier}/activate", web::post().to(activate))
            .route("/{identifier}/destroy", web::post().to(destroy)),
    );
}

/// Proof that the request carried the admin token.
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = AppError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let expected = req
            .app_data::<web::Data<Tenancy>>()
            .and_then(|t| t.settings.admin_token.clone());
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let authorized = match (expected, presented) {
            (Some(expected), Some(presented)) => bool::from(
                expected
                    .expose_secret()
                    .as_bytes()
                    .ct_eq(presented.trim().as_bytes()),
            ),
            _ => false,
        };
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
