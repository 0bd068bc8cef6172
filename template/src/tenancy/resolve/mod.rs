//! The resolver{% if resolution == "chain" %}s{% endif %} this service was generated with: {% if resolution == "chain" %}they read{% else %}it reads{% endif %} a request and name{% if resolution != "chain" %}s{% endif %} the
//! tenant, or say why not. They never look the tenant up; the middleware does.
{%- if resolution == "chain" %}

mod chain;
{%- endif %}
{%- for r in resolvers %}

pub mod {{r}};
{%- endfor %}

{%- if resolution == "chain" %}

pub use chain::resolve;
{%- elsif resolution == "jwt" %}

use actix_web::dev::ServiceRequest;

use crate::config::Settings;
use crate::domain::TenantIdentifier;
use crate::error::AppError;

/// The tenant of the request's bearer token; without one, 401.
pub fn resolve(
    req: &mut ServiceRequest,
    settings: &Settings,
) -> Result<TenantIdentifier, AppError> {
    jwt::resolve(req, settings).map_err(jwt::missing_is_unauthorized)
}
{%- else %}

pub use {{resolution}}::resolve;
{%- endif %}
