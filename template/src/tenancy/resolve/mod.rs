//! Tenant resolution: each resolver reads a request and says which tenant it names, that
//! it names none, or that what it carries is refused ([`Found`]). Resolvers never look
//! the tenant up; the middleware does.
{%- if resolution == "chain" %}

mod chain;
{%- endif %}
{%- for r in resolvers %}

pub mod {{r}};
{%- endfor %}

use crate::domain::TenantIdentifier;

/// What a resolver found in a request. The middleware turns it into a tenant or an
/// HTTP answer; a chain of resolvers combines them (see `chain.rs` when generated).
#[derive(Debug)]
pub enum Found {
    /// The request names this tenant (not yet looked up).
    Tenant(TenantIdentifier),
    /// The request carries nothing this resolver reads; `hint` says what it could send.
    Nothing { hint: String },
    /// What the request carries is refused: the request ends here, whatever else it
    /// carries.
    Rejected(Rejection),
}

/// Why a request's tenant was refused before it was looked up.
#[derive(Debug)]
pub enum Rejection {
    /// Not a valid identifier: answered as an unknown tenant would be, so that tenants
    /// cannot be told apart from malformed names.
    Malformed(String),
    /// A credential (a token) that did not pass its checks.
    Credentials(String),
    /// Two resolvers of a chain name different tenants.
    Disagreement(String),
}

impl Found {
    /// `value` as a tenant identifier, or a rejection saying why it is none.
    pub fn identifier(value: &str) -> Self {
        match TenantIdentifier::parse(value) {
            Ok(identifier) => Found::Tenant(identifier),
            Err(why) => Found::Rejected(Rejection::Malformed(why)),
        }
    }
}
{%- if resolution == "chain" %}

pub use chain::resolve;
{%- elsif resolution == "jwt" %}

/// The tenant of the request's bearer token; without one, the request is refused for
/// lack of credentials (401), a token being the only way in.
pub fn resolve(
    req: &mut actix_web::dev::ServiceRequest,
    settings: &crate::config::Settings,
) -> Found {
    match jwt::resolve(req, settings) {
        Found::Nothing { hint } => Found::Rejected(Rejection::Credentials(hint)),
        found => found,
    }
}
{%- else %}

pub use {{resolution}}::resolve;
{%- endif %}
