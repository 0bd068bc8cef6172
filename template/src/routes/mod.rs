//! HTTP routes. Handlers under `/api` are tenant-scoped through extractors and contain no
//! tenancy code of their own.
{%- if admin_api %}

pub mod admin;
{%- endif %}
pub mod health;
pub mod notes;

use actix_web::web;

/// The tenant-scoped API.
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/api").configure(notes::routes));
}
