//! What the tenancy layer reads from the configuration: the database, the resolvers, the
//! isolation strategy's own settings and the registry cache.

use std::time::Duration;

use super::isolation::{Selected, Strategy};
use super::rate::RateSettings;
use super::resolve::ResolveSettings;
{%- if redis_cache %}
use super::shared_cache::RedisSettings;
{%- endif %}
use crate::db::settings::DatabaseSettings;
use crate::settings::{ConfigError, Key, Source};

#[derive(Debug, Clone)]
pub struct TenancySettings {
    pub database: DatabaseSettings,
    /// What the tenant resolver{% if resolution == "chain" %}s{% endif %} read.
    pub resolve: ResolveSettings,
    /// The isolation strategy's own settings.
    pub isolation: <Selected as Strategy>::Settings,
    /// How long a registry look-up is reused (`TENANCY_TENANT_CACHE_TTL`).
    pub tenant_cache_ttl: Duration,
    /// Tenants this service holds at most, whatever their status (`TENANCY_MAX_TENANTS`;
    /// none: no limit).
    pub max_tenants: Option<u64>,
    /// Days a destroyed tenant's identifier is refused to a new tenant
    /// (`TENANCY_IDENTIFIER_QUARANTINE_DAYS`; 0: none).
    pub identifier_quarantine_days: u32,
    /// Request rate limits per tenant.
    pub rate: RateSettings,
{%- if redis_cache %}
    /// The cache's shared level.
    pub redis: RedisSettings,
{%- endif %}
}

const KEYS: &[Key] = &[
    ("tenant_cache_ttl", Some("30")),
    ("max_tenants", None),
    ("identifier_quarantine_days", Some("30")),
];

impl TenancySettings {
    /// Every key the tenancy layer reads.
    pub fn keys() -> Vec<&'static [Key]> {
        let mut keys = vec![KEYS, DatabaseSettings::KEYS];
        keys.extend(Selected::KEYS);
        keys.push(RateSettings::KEYS);
{%- if redis_cache %}
        keys.push(RedisSettings::KEYS);
{%- endif %}
        ResolveSettings::add_keys(&mut keys);
        keys
    }

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseSettings::read(src)?,
            resolve: ResolveSettings::read(src)?,
            isolation: Selected::read_settings(src)?,
            tenant_cache_ttl: src.seconds("tenant_cache_ttl", 0, 3600)?,
            max_tenants: match src.optional("max_tenants") {
                Some(_) => Some(src.number("max_tenants", 1, 10_000_000)?),
                None => None,
            },
            identifier_quarantine_days: src.number("identifier_quarantine_days", 0, 3650)?,
            rate: RateSettings::read(src)?,
{%- if redis_cache %}
            redis: RedisSettings::read(src)?,
{%- endif %}
        })
    }
}
