//! HTTP routes. Only the routes under `/api` belong to a tenant: the tenant middleware
//! wraps that scope alone, so health, metrics and the admin API never need one. Handlers
//! under `/api` are tenant-scoped through extractors and contain no tenancy code of
//! their own; a public route goes outside `/api`.
{%- if admin_api %}

pub mod admin;
{%- endif %}
pub mod health;
pub mod notes;

use actix_web::middleware::from_fn;
use actix_web::web;

use crate::tenancy::middleware::resolve_tenant;

/// The tenant-scoped API: every request under `/api` names a known, active tenant, or
/// ends in the middleware with a problem+json error.
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api")
            .wrap(from_fn(resolve_tenant))
            .configure(notes::routes),
    );
}
