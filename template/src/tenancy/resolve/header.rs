//! Header resolution: the tenant is named by a request header (`TENANCY_TENANT_HEADER`,
//! default `X-Tenant-ID`). Whoever can send the header chooses the tenant: put an
//! authenticating proxy in front, or generate the service with JWT resolution.

use actix_web::dev::ServiceRequest;

use super::found::{Found, Rejection};

#[derive(Debug, Clone)]
pub struct HeaderSettings {
    /// The header that names the tenant (`TENANCY_TENANT_HEADER`).
    pub name: String,
}

/// The tenant named by the request's header; nothing without the header; a malformed
/// value is rejected (and answered like an unknown tenant).
pub fn resolve(req: &mut ServiceRequest, settings: &HeaderSettings) -> Found {
    let Some(value) = req.headers().get(settings.name.as_str()) else {
        return Found::Nothing {
            hint: format!("send the tenant identifier in the {} header", settings.name),
        };
    };
    match value.to_str() {
        Ok(text) => Found::identifier(text.trim()),
        Err(_) => Found::Rejected(Rejection::Malformed(
            "the tenant header is not visible ASCII".into(),
        )),
    }
}
