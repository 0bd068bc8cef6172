//! An in-process cache of registry look-ups, so a known tenant costs no registry query
//! per request. Entries live `TENANCY_TENANT_CACHE_TTL` seconds (unknown identifiers at
//! most 5 s); this process drops an entry at once when it changes that tenant. Other
//! processes see a change within the TTL. Concurrent misses for one identifier make one
//! registry query: the others wait for its answer.
//!
//! Beside it, the set of every registered identifier, read at most once per 5 s, and only
//! when a request names an identifier outside it: an identifier it does not hold is
//! unknown without a query. A flood of made-up identifiers therefore costs one registry
//! read per 5 s, not one per request. A tenant that another process created is served
//! here within those 5 s (one this process created, at once).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::domain::{Tenant, TenantIdentifier};

const MAX_ENTRIES: usize = 100_000;
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How long the set of registered identifiers is trusted.
const KNOWN_REFRESH: Duration = MAX_NEGATIVE_TTL;
/// Locks that serialise registry reads of the same identifier.
const LOOKUP_LOCKS: usize = 64;

/// A registry answer (`None`: no such tenant) and when it expires.
type Entry = (Option<Arc<Tenant>>, Instant);

pub struct TenantCache {
    ttl: Duration,
    entries: RwLock<HashMap<TenantIdentifier, Entry>>,
    /// Every registered identifier and when the registry was read (`None`: not yet).
    known: RwLock<Option<(HashSet<TenantIdentifier>, Instant)>>,
    /// One registry read of the identifiers at a time.
    reload: tokio::sync::Mutex<()>,
    /// One registry read per tenant at a time: concurrent misses for the same identifier
    /// wait for the first one's answer (identifiers share these by hash).
    lookup_locks: Vec<tokio::sync::Mutex<()>>,
    lookups: AtomicU64,
    reloads: AtomicU64,
}

/// What the registry was asked, since start-up (shown by `/health`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RegistryStats {
    /// Reads of one tenant (a cache miss for a registered identifier).
    pub lookups: u64,
    /// Reads of the set of registered identifiers.
    pub identifier_reads: u64,
}

impl TenantCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
            known: RwLock::new(None),
            reload: tokio::sync::Mutex::new(()),
            lookup_locks: (0..LOOKUP_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            lookups: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        }
    }

    /// Whether `identifier` is registered, if the set read last is recent enough to say.
    pub fn is_known(&self, identifier: &TenantIdentifier) -> Option<bool> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let (identifiers, read_at) = known.as_ref()?;
        (read_at.elapsed() < KNOWN_REFRESH).then(|| identifiers.contains(identifier))
    }

    /// Held while the registry's identifiers are read, so that one request reads them.
    pub async fn reload_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reload.lock().await
    }

    /// Replaces the set with what the registry holds now.
    pub fn set_known(&self, identifiers: HashSet<TenantIdentifier>) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        *known = Some((identifiers, Instant::now()));
    }

    /// Adds an identifier this process registered, so it is served at once.
    pub fn add_known(&self, identifier: &TenantIdentifier) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some((identifiers, _)) = known.as_mut() {
            identifiers.insert(identifier.clone());
        }
    }

    /// Held while `identifier` is read from the registry, so that concurrent misses for
    /// it make one query: after taking it, look in the cache again.
    pub async fn lookup_lock(
        &self,
        identifier: &TenantIdentifier,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        identifier.hash(&mut hasher);
        self.lookup_locks[hasher.finish() as usize % LOOKUP_LOCKS]
            .lock()
            .await
    }

    /// Counts a registry read of one tenant.
    pub fn count_lookup(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            lookups: self.lookups.load(Ordering::Relaxed),
            identifier_reads: self.reloads.load(Ordering::Relaxed),
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
