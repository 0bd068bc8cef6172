//! Header resolution: the tenant is named by a request header (`TENANCY_TENANT_HEADER`,
//! default `X-Tenant-ID`). Whoever can send the header chooses the tenant: put an
//! authenticating proxy in front, or generate the service with JWT resolution.

use actix_web::dev::ServiceRequest;

use crate::config::Settings;
use crate::domain::TenantIdentifier;
use crate::error::AppError;

/// The tenant named by the request: 400 without the header, 404 for a malformed value
/// (the same answer as for an unknown tenant).
pub fn resolve(
    req: &mut ServiceRequest,
    settings: &Settings,
) -> Result<TenantIdentifier, AppError> {
    let Some(value) = req.headers().get(settings.tenant_header.as_str()) else {
        return Err(AppError::MissingTenant {
            hint: format!(
                "send the tenant identifier in the {} header",
                settings.tenant_header
            ),
        });
    };
    let text = value.to_str().map_err(|_| AppError::TenantNotFound {
        detail: "the tenant header is not visible ASCII".into(),
    })?;
    TenantIdentifier::parse(text.trim()).map_err(|why| AppError::TenantNotFound { detail: why })
}
