//! What the resolvers of this service read from the configuration, each resolver's part
//! defined in its own file (built by `config.rs`, which reads and checks the `TENANCY_*`
//! variables).
{%- if jwt_resolver %}

use std::sync::Arc;
{%- endif %}

#[derive(Debug, Clone)]
pub struct ResolveSettings {
{%- if header_resolver %}
    pub header: super::header::HeaderSettings,
{%- endif %}
{%- if subdomain_resolver %}
    pub subdomain: super::subdomain::SubdomainSettings,
{%- endif %}
{%- if path_resolver %}
    pub path: super::path::PathSettings,
{%- endif %}
{%- if jwt_resolver %}
    /// Verifies bearer tokens (`TENANCY_JWT_*`).
    pub jwt: Arc<super::jwt::Verifier>,
{%- endif %}
}
