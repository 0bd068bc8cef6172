//! An in-process cache of registry look-ups, so a known tenant costs no registry query
//! per request. Entries live `TENANCY_TENANT_CACHE_TTL` seconds (unknown identifiers at
//! most 5 s); this process drops an entry at once when it changes that tenant. Other
//! processes see a change within the TTL.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::domain::{Tenant, TenantIdentifier};

const MAX_ENTRIES: usize = 100_000;
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// A registry answer (`None`: no such tenant) and when it expires.
type Entry = (Option<Arc<Tenant>>, Instant);

pub struct TenantCache {
    ttl: Duration,
    entries: RwLock<HashMap<TenantIdentifier, Entry>>,
}

impl TenantCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// `Some(found)` on a fresh hit (`found` is `None` for a known-unknown identifier).
    pub fn get(&self, identifier: &TenantIdentifier) -> Option<Option<Arc<Tenant>>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let (tenant, expires) = entries.get(identifier)?;
        (Instant::now() < *expires).then(|| tenant.clone())
    }

    pub fn insert(&self, identifier: TenantIdentifier, tenant: Option<Arc<Tenant>>) {
        if self.ttl.is_zero() {
            return;
        }
        let ttl = if tenant.is_some() {
            self.ttl
        } else {
            self.ttl.min(MAX_NEGATIVE_TTL)
        };
        let now = Instant::now();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(identifier, (tenant, now + ttl));
    }

    pub fn invalidate(&self, identifier: &TenantIdentifier) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.remove(identifier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantIdentifier {
        TenantIdentifier::parse(s).unwrap()
    }

    #[test]
    fn hits_until_invalidated() {
        let cache = TenantCache::new(Duration::from_secs(60));
        assert!(cache.get(&id("acme")).is_none());
        cache.insert(id("acme"), None);
        assert!(matches!(cache.get(&id("acme")), Some(None)));
        cache.invalidate(&id("acme"));
        assert!(cache.get(&id("acme")).is_none());
    }

    #[test]
    fn zero_ttl_disables_the_cache() {
        let cache = TenantCache::new(Duration::ZERO);
        cache.insert(id("acme"), None);
        assert!(cache.get(&id("acme")).is_none());
    }
}
