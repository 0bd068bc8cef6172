//! Tenant resolution: each resolver reads a request and says which tenant it names, that
//! it names none, or that what it carries is refused ([`Found`]). Resolvers never look
//! the tenant up; the middleware does.
{%- if resolution == "chain" %}

mod chain;
{%- endif %}
{%- for r in resolvers %}

pub mod {{r}};
{%- endfor %}

mod found;
mod settings;

pub use found::{Found, Rejection};
pub use settings::ResolveSettings;
{%- if resolution == "chain" %}

pub use chain::resolve;
{%- elsif resolution == "jwt" %}

/// The tenant of the request's bearer token; without one, the request is refused for
/// lack of credentials (401), a token being the only way in.
pub fn resolve(req: &mut actix_web::dev::ServiceRequest, settings: &ResolveSettings) -> Found {
    match jwt::resolve(req, &settings.jwt) {
        Found::Nothing { hint } => Found::Rejected(Rejection::Credentials(hint)),
        found => found,
    }
}
{%- else %}

/// The tenant the request names, by {{resolution}}.
pub fn resolve(req: &mut actix_web::dev::ServiceRequest, settings: &ResolveSettings) -> Found {
    {{resolution}}::resolve(req, &settings.{{resolution}})
}
{%- endif %}
