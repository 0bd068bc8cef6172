//! The tenant directory: who each tenant is, asked by every request. A lookup goes to the
//! local cache (`cache`), then{% if redis_cache %} to Redis, which the replicas share
//! (`shared_cache`), then{% endif %} to the registry (`registry`), and leaves its answer in
//! the levels it passed; a change made here is forgotten at once, one made elsewhere when
//! `changes` hears of it. `Tenancy` answers through it and holds nothing of its own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::cache::{CacheStats, {% if redis_cache %}Change, {% endif %}TenantCache};
use super::registry;
{%- if redis_cache %}
use super::shared_cache::{SharedCache, SharedStats};
{%- endif %}
use crate::db::ControlPool;
use crate::db::pool::PoolError;
use crate::domain::{Tenant, TenantIdentifier, TenantStatus};

/// Why a request's tenant is not served.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// No such tenant, or a deleted one.
    #[error("{0}")]
    Unknown(String),
    /// Suspended, or still being provisioned.
    #[error("{0}")]
    Inactive(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("could not read the tenant registry: {0}")]
    Registry(#[from] diesel::result::Error),
}

/// Why the tenant registry could not be read (`Tenancy::check_registry`).
#[derive(Debug, thiserror::Error)]
pub enum RegistryCheck {
    /// No connection to the database: down, another address, refused credentials.
    #[error(transparent)]
    Unreachable(#[from] PoolError),
    /// Connected, but the registry is not there (not migrated) or not readable.
    #[error(transparent)]
    Unreadable(#[from] diesel::result::Error),
}

/// What the service knows of its tenants, and where it asks.
pub struct TenantDirectory {
    /// This process's level (also the set of registered identifiers).
    pub(super) cache: Arc<TenantCache>,
{%- if redis_cache %}
    /// The level the replicas share (Redis).
    pub(super) shared: Arc<SharedCache>,
{%- endif %}
    /// The registry's connections.
    control: ControlPool,
    /// The tenants whose registry metadata this process last read as undecodable
    /// (`/health` counts them).
    undecodable: Mutex<HashSet<TenantIdentifier>>,
}

impl TenantDirectory {
    pub fn new(cache: Arc<TenantCache>, {% if redis_cache %}shared: Arc<SharedCache>, {% endif %}control: ControlPool) -> Self {
        Self {
            cache,
{%- if redis_cache %}
            shared,
{%- endif %}
            control,
            undecodable: Mutex::default(),
        }
    }

    /// How many tenants the registry holds in each status (`/health`, `/metrics`).
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, RegistryCheck> {
        let mut conn = self.control.get().await?;
        Ok(registry::count_by_status(&mut conn).await?)
    }

    /// The active tenant named `identifier`, from the cache{% if redis_cache %}, Redis{% endif %} or the registry.
    pub async fn active(&self, identifier: &TenantIdentifier) -> Result<Arc<Tenant>, TenantError> {
        let tenant = match self.cache.get(identifier) {
            Some(hit) => hit,
            None if !self.is_registered(identifier).await? => None,
            None => {
                let _one_lookup = self.cache.lookup_lock(identifier).await;
                // A concurrent request may have read it while this one waited.
                match self.cache.get(identifier) {
                    Some(hit) => hit,
                    None => {
                        let since = self.cache.generation(identifier);
{%- if redis_cache %}
                        // Only while changes are heard: Redis may hold what a change
                        // unheard of replaced.
                        if self.cache.is_watching()
                            && let Some(tenant) = self.shared.get(identifier).await
                        {
                            self.cache
                                .insert(identifier.clone(), Some(tenant.clone()), since);
                            return answer(identifier, Some(tenant));
                        }
{%- endif %}
                        self.cache.count_lookup();
                        let mut conn = self.control.get().await?;
                        let found = registry::find_by_identifier(&mut conn, identifier)
                            .await?
                            .map(Arc::new);
                        self.note_decoded(found.as_deref(), false);
{%- if redis_cache %}
                        if let Some(tenant) = &found {
                            self.shared.put(tenant).await;
                        }
{%- endif %}
                        self.cache.insert(identifier.clone(), found.clone(), since);
                        found
                    }
                }
            }
        };
        answer(identifier, tenant)
    }

    /// Records which of `tenants`, as just read from the registry, have metadata that could
    /// not be decoded; `all`: they are the whole registry.
    pub fn note_decoded<'a>(&self, tenants: impl IntoIterator<Item = &'a Tenant>, all: bool) {
        let mut undecodable = self
            .undecodable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all {
            undecodable.clear();
        }
        for tenant in tenants {
            if tenant.metadata_undecodable() {
                undecodable.insert(tenant.identifier.clone());
            } else if !all {
                undecodable.remove(&tenant.identifier);
            }
        }
    }

    /// How many tenants' registry metadata this process last read as undecodable.
    pub fn undecodable(&self) -> usize {
        self.undecodable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether the registry holds `identifier`, from the set of registered identifiers
    /// (read again when it may be out of date; see `cache`).
    async fn is_registered(&self, identifier: &TenantIdentifier) -> Result<bool, TenantError> {
        if let Some(known) = self.cache.is_known(identifier) {
            return Ok(known);
        }
        let _one_read = self.cache.reload_lock().await;
        // Another request may have read it while this one waited.
        if let Some(known) = self.cache.is_known(identifier) {
            return Ok(known);
        }
        let mut conn = self.control.get().await?;
        self.cache.reading_known();
        let identifiers: HashSet<_> = registry::identifiers(&mut conn)
            .await?
            .into_iter()
            .collect();
        self.cache.set_known(identifiers);
        let known = self.cache.is_known(identifier).unwrap_or(true);
        Ok(known)
    }

    /// What the tenant cache and the registry did since start-up.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }
{%- if redis_cache %}

    /// What the cache's shared level (Redis) did since start-up, and whether it is used.
    pub fn shared_stats(&self) -> SharedStats {
        self.shared.stats()
    }
{%- endif %}

    /// Drops what this process remembers of `tenant` after changing it (`tenant` as it is
    /// now), at once; other processes hear of it through `changes`.
    pub async fn forget(&self, tenant: &Tenant) {
{%- if redis_cache %}
        // Redis first (see `changes`).
        self.shared
            .forget(&Change::Written {
                identifier: tenant.identifier.clone(),
                version: tenant.updated_at.timestamp_micros(),
            })
            .await;
{%- endif %}
        self.cache.changed(&tenant.identifier);
    }
}

/// Whether the tenant named `identifier` (`None`: unknown) is served.
fn answer(
    identifier: &TenantIdentifier,
    tenant: Option<Arc<Tenant>>,
) -> Result<Arc<Tenant>, TenantError> {
    match tenant {
        Some(tenant) if tenant.status == TenantStatus::Active => Ok(tenant),
        Some(tenant) if tenant.status == TenantStatus::Deleted => Err(TenantError::Unknown(
            format!("tenant '{identifier}' is deleted"),
        )),
        Some(tenant) => Err(TenantError::Inactive(format!(
            "tenant '{identifier}' is {}",
            tenant.status
        ))),
        None => Err(TenantError::Unknown(format!("no tenant '{identifier}'"))),
    }
}
