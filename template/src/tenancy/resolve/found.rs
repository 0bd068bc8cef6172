//! What a resolver found in a request: a tenant, nothing, or a rejection.

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
{%- if header_resolver or jwt_resolver %}
    /// The request carries what names its tenant more than once (two tenant headers, two
    /// `Authorization` headers): a proxy that appends a header instead of replacing it
    /// would otherwise let the client's copy choose. Answered 400.
    Repeated(String),
{%- endif %}
{%- if jwt_resolver %}
    /// A credential (a token) that did not pass its checks.
    Credentials(String),
{%- endif %}
{%- if resolution == "chain" %}
    /// Two resolvers of the chain name different tenants.
    Disagreement(String),
{%- endif %}
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
