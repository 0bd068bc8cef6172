//! HTTP routes. Only the routes under `/api` belong to a tenant: the tenant middleware
//! wraps that scope alone, so health, metrics and the admin API never need one. Handlers
//! under `/api` are tenant-scoped through extractors and contain no tenancy code of
//! their own; a public route goes outside `/api`.
{%- if admin_api %}

pub mod admin;
{%- endif %}
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod notes;

use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, http::header, web};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::tenancy::middleware::resolve_tenant;

/// The tenant-scoped API: every request under `/api` names a known, active tenant, or
/// ends in the middleware with a problem+json error.
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api")
            .wrap(from_fn(resolve_tenant))
            .configure(notes::routes)
            .configure(jobs::routes),
    );
}

/// Whether the request carries exactly one `Authorization: Bearer <expected>` (compared in
/// constant time). With two Authorization headers, a proxy's and a client's, neither is
/// trusted.
pub(crate) fn bearer_is(req: &HttpRequest, expected: &SecretString) -> bool {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| {
                bool::from(
                    expected
                        .expose_secret()
                        .as_bytes()
                        .ct_eq(presented.trim().as_bytes()),
                )
            }),
        _ => false,
    }
}
