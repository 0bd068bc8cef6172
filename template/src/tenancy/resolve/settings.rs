//! What the resolvers of this service read from the configuration, each resolver's part
//! defined and checked in its own file.
{%- if jwt_resolver %}

use std::sync::Arc;
{%- endif %}

use crate::settings::{ConfigError, Key, Source};

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

impl ResolveSettings {
    /// Adds the keys of every resolver to `keys`.
    pub fn add_keys(keys: &mut Vec<&'static [Key]>) {
{%- if header_resolver %}
        keys.push(super::header::HeaderSettings::KEYS);
{%- endif %}
{%- if subdomain_resolver %}
        keys.push(super::subdomain::SubdomainSettings::KEYS);
{%- endif %}
{%- if path_resolver %}
        keys.push(super::path::PathSettings::KEYS);
{%- endif %}
{%- if jwt_resolver %}
        keys.push(super::jwt::Verifier::KEYS);
{%- endif %}
    }

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        Ok(Self {
{%- if header_resolver %}
            header: super::header::HeaderSettings::read(src)?,
{%- endif %}
{%- if subdomain_resolver %}
            subdomain: super::subdomain::SubdomainSettings::read(src)?,
{%- endif %}
{%- if path_resolver %}
            path: super::path::PathSettings::read(src)?,
{%- endif %}
{%- if jwt_resolver %}
            jwt: Arc::new(super::jwt::Verifier::read(src)?),
{%- endif %}
        })
    }
}
