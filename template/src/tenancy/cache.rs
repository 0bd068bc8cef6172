//! An in-process cache of registry look-ups, so a known tenant costs no registry query
//! per request (moka: bounded, the least useful entries evicted first).
//!
//! - An entry lives `TENANCY_TENANT_CACHE_TTL` seconds (an unknown identifier at most 5 s).
//! - Changes made anywhere reach it within a second: PostgreSQL announces every change to
//!   the registry, and `changes` drops the entry of the tenant named ([`TenantCache::apply`]).
//!   While that announcement channel is down, entries are trusted for at most a second, and
//!   the cache is emptied when it is back, so a missed announcement leaves nothing stale.
//! - Concurrent misses for one identifier make one registry query: the others wait for its
//!   answer ([`TenantCache::lookup_lock`]).
//! - Beside it, the set of every registered identifier, read only when a request names an
//!   identifier outside it: an identifier it does not hold is unknown without a query, so a
//!   flood of made-up identifiers costs one registry read per period (5 s while
//!   announcements arrive, which also add new identifiers at once; 1 s while they do not).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::domain::{Tenant, TenantIdentifier};

const MAX_ENTRIES: u64 = 100_000;
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How long an entry or the identifier set is trusted while announcements do not arrive.
pub const UNWATCHED_TRUST: Duration = Duration::from_secs(1);
/// The same where nothing listens by design (a transaction pooler and no URL for
/// `LISTEN`): the registry is polled this often, so replicas agree within a second.
pub const POLLED_TRUST: Duration = Duration::from_millis(500);
/// How long the set of registered identifiers is trusted while announcements arrive.
const KNOWN_REFRESH: Duration = MAX_NEGATIVE_TTL;
/// Identifiers share this many lookup locks and change counters, by hash.
const SLOTS: usize = 256;

/// A registry answer (`None`: no such tenant) and when it was read.
#[derive(Clone)]
struct Entry {
    tenant: Option<Arc<Tenant>>,
    read_at: Instant,
}

/// A change to the registry, as PostgreSQL announced it.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Inserted or updated; `version` is its new `updated_at` in microseconds.
    Written {
        identifier: TenantIdentifier,
        version: i64,
    },
    /// The row was deleted (the tenant was destroyed).
    Removed(TenantIdentifier),
}

impl Change {
    /// Reads an announcement's payload: `'<identifier> <version>'` or `'<identifier>'`.
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split(' ');
        let identifier = TenantIdentifier::parse(parts.next()?).ok()?;
        let change = match parts.next() {
            Some(version) => Change::Written {
                identifier,
                version: version.parse().ok()?,
            },
            None => Change::Removed(identifier),
        };
        parts.next().is_none().then_some(change)
    }
}

pub struct TenantCache {
    ttl: Duration,
    /// [`UNWATCHED_TRUST`], or [`POLLED_TRUST`] when nothing listens by design.
    unwatched_trust: Duration,
    entries: moka::sync::Cache<TenantIdentifier, Entry>,
    /// Every registered identifier, and the changes applied while it is being read.
    known: RwLock<KnownState>,
    /// Whether announcements of changes arrive (see `changes`).
    watching: AtomicBool,
    /// Changes applied so far, per slot (identifiers share slots by hash): a registry
    /// read of a tenant that a change of its slot crossed is not kept.
    generations: Vec<AtomicU64>,
    /// One registry read of the identifiers at a time.
    reload: tokio::sync::Mutex<()>,
    /// One registry read per tenant at a time: concurrent misses for the same identifier
    /// wait for the first one's answer (per slot).
    lookup_locks: Vec<tokio::sync::Mutex<()>>,
    hits: AtomicU64,
    lookups: AtomicU64,
    reloads: AtomicU64,
    changes: AtomicU64,
}

#[derive(Default)]
struct KnownState {
    /// The set read last (`None`: never read yet).
    set: Option<Known>,
    /// While the set is read: each identifier changed meanwhile, and whether it is
    /// registered now; replayed onto what the read returns. `None` after `forget_all`.
    pending: Option<Vec<(TenantIdentifier, bool)>>,
}

struct Known {
    identifiers: HashSet<TenantIdentifier>,
    read_at: Instant,
    /// Announcements may have been missed since the read: read again on the next miss.
    stale: bool,
}

impl KnownState {
    /// Records that `identifier` is registered (or not) now.
    fn note(&mut self, identifier: &TenantIdentifier, registered: bool) {
        if let Some(pending) = self.pending.as_mut() {
            pending.push((identifier.clone(), registered));
        }
        if let Some(known) = self.set.as_mut() {
            if registered {
                known.identifiers.insert(identifier.clone());
            } else {
                known.identifiers.remove(identifier);
            }
        }
    }
}

/// What the cache and the registry did since start-up (shown by `/health`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CacheStats {
    /// Requests answered from the cache.
    pub hits: u64,
    /// Reads of one tenant from the registry (a miss for a registered identifier).
    pub lookups: u64,
    /// Reads of the set of registered identifiers.
    pub identifier_reads: u64,
    /// Changes announced by PostgreSQL and applied.
    pub changes: u64,
    /// Entries held now.
    pub entries: u64,
    /// Whether announcements of changes arrive.
    pub watching: bool,
}

impl TenantCache {
    pub fn new(ttl: Duration) -> Self {
        let negative_ttl = ttl.min(MAX_NEGATIVE_TTL);
        Self {
            ttl,
            unwatched_trust: UNWATCHED_TRUST,
            entries: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(Expiry { ttl, negative_ttl })
                .build(),
            known: RwLock::new(KnownState::default()),
            watching: AtomicBool::new(false),
            generations: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            reload: tokio::sync::Mutex::new(()),
            lookup_locks: (0..SLOTS).map(|_| tokio::sync::Mutex::new(())).collect(),
            hits: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    /// A cache of a process that does not listen for changes by design: it polls.
    pub fn polled(mut self) -> Self {
        self.unwatched_trust = POLLED_TRUST;
        self
    }

    /// How long what was read from the registry is trusted without announcements.
    fn trust(&self, watched: Duration) -> Duration {
        if self.is_watching() {
            watched
        } else {
            self.unwatched_trust.min(watched)
        }
    }

    fn slot(identifier: &TenantIdentifier) -> usize {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        identifier.hash(&mut hasher);
        hasher.finish() as usize % SLOTS
    }

    /// The number a registry read of `identifier` takes before it starts and gives back
    /// to [`insert`](TenantCache::insert): a change of it applied in between makes the
    /// read's answer not kept.
    pub fn generation(&self, identifier: &TenantIdentifier) -> u64 {
        self.generations[Self::slot(identifier)].load(Ordering::Acquire)
    }

    fn bump(&self, identifier: &TenantIdentifier) {
        self.generations[Self::slot(identifier)].fetch_add(1, Ordering::AcqRel);
    }

    fn known(&self) -> std::sync::RwLockWriteGuard<'_, KnownState> {
        self.known.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `identifier` is registered, if the set read last can say: an identifier in
    /// it may be registered (the registry read that follows tells), one outside it is not,
    /// while the set is recent.
    pub fn is_known(&self, identifier: &TenantIdentifier) -> Option<bool> {
        let state = self.known.read().unwrap_or_else(|p| p.into_inner());
        let known = state.set.as_ref()?;
        let fresh = !known.stale && known.read_at.elapsed() < self.trust(KNOWN_REFRESH);
        let holds = known.identifiers.contains(identifier);
        (fresh || holds).then_some(holds)
    }

    /// Held while the registry's identifiers are read, so that one request reads them.
    pub async fn reload_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reload.lock().await
    }

    /// Call before reading the registry's identifiers (holding [`reload_lock`]): changes
    /// applied from now on are replayed onto what the read returns.
    ///
    /// [`reload_lock`]: TenantCache::reload_lock
    pub fn reading_known(&self) {
        self.known().pending = Some(Vec::new());
    }

    /// Replaces the set with what the registry returned, plus the changes applied since
    /// [`reading_known`](TenantCache::reading_known).
    pub fn set_known(&self, mut identifiers: HashSet<TenantIdentifier>) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let mut state = self.known();
        let pending = state.pending.take();
        let stale = pending.is_none();
        for (identifier, registered) in pending.into_iter().flatten() {
            if registered {
                identifiers.insert(identifier);
            } else {
                identifiers.remove(&identifier);
            }
        }
        state.set = Some(Known {
            identifiers,
            read_at: Instant::now(),
            stale,
        });
    }

    /// Held while `identifier` is read from the registry, so that concurrent misses for
    /// it make one query: after taking it, look in the cache again.
    pub async fn lookup_lock(
        &self,
        identifier: &TenantIdentifier,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        self.lookup_locks[Self::slot(identifier)].lock().await
    }

    /// Counts a registry read of one tenant.
    pub fn count_lookup(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            lookups: self.lookups.load(Ordering::Relaxed),
            identifier_reads: self.reloads.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
            watching: self.is_watching(),
        }
    }

    /// `Some(found)` on a hit (`found` is `None` for a known-unknown identifier).
    pub fn get(&self, identifier: &TenantIdentifier) -> Option<Option<Arc<Tenant>>> {
        let entry = self.entries.get(identifier)?;
        if entry.read_at.elapsed() >= self.trust(self.ttl) {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.tenant)
    }

    /// Keeps what a registry read that began at generation `since` found, unless a change
    /// of the tenant was applied meanwhile (the answer may predate it).
    pub fn insert(&self, identifier: TenantIdentifier, tenant: Option<Arc<Tenant>>, since: u64) {
        if self.ttl.is_zero() || self.generation(&identifier) != since {
            return;
        }
        let entry = Entry {
            tenant,
            read_at: Instant::now(),
        };
        self.entries.insert(identifier, entry);
    }

    /// Drops what is held of a tenant this process has just changed.
    pub fn changed(&self, identifier: &TenantIdentifier) {
        let mut known = self.known();
        self.bump(identifier);
        self.entries.invalidate(identifier);
        known.note(identifier, true);
    }

    /// Applies a change announced by PostgreSQL: what is held of the tenant is dropped,
    /// unless it is the announced version or a later one.
    pub fn apply(&self, change: &Change) {
        self.changes.fetch_add(1, Ordering::Relaxed);
        let mut known = self.known();
        match change {
            Change::Written {
                identifier,
                version,
            } => {
                self.bump(identifier);
                known.note(identifier, true);
                let current = self.entries.get(identifier).is_some_and(|entry| {
                    entry
                        .tenant
                        .is_some_and(|tenant| tenant.updated_at.timestamp_micros() >= *version)
                });
                if !current {
                    self.entries.invalidate(identifier);
                }
            }
            Change::Removed(identifier) => {
                self.bump(identifier);
                known.note(identifier, false);
                self.entries.invalidate(identifier);
            }
        }
    }

    /// Announcements arrive from now on: nothing held from before can be trusted (changes
    /// may have been missed), so the cache starts empty.
    pub fn watching_started(&self) {
        self.forget_all();
        self.watching.store(true, Ordering::Release);
    }

    /// Drops every entry, and marks the identifier set for a new read.
    pub fn forget_all(&self) {
        let mut known = self.known();
        for generation in &self.generations {
            generation.fetch_add(1, Ordering::AcqRel);
        }
        self.entries.invalidate_all();
        if let Some(set) = known.set.as_mut() {
            set.stale = true;
        }
        known.pending = None;
    }

    /// Whether announcements of changes arrive.
    pub fn is_watching(&self) -> bool {
        self.watching.load(Ordering::Acquire)
    }

    /// Announcements stopped: entries are trusted for at most [`UNWATCHED_TRUST`].
    pub fn watching_stopped(&self) {
        self.watching.store(false, Ordering::Release);
    }
}

/// Entries of known tenants live the TTL; of unknown identifiers at most 5 s.
struct Expiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<TenantIdentifier, Entry> for Expiry {
    fn expire_after_create(
        &self,
        _: &TenantIdentifier,
        entry: &Entry,
        _: Instant,
    ) -> Option<Duration> {
        Some(if entry.tenant.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }

    fn expire_after_update(
        &self,
        key: &TenantIdentifier,
        entry: &Entry,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, updated_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantIdentifier {
        TenantIdentifier::parse(s).unwrap()
    }

    fn watched(ttl: u64) -> TenantCache {
        let cache = TenantCache::new(Duration::from_secs(ttl));
        cache.watching_started();
        cache
    }

    #[test]
    fn hits_until_changed() {
        let cache = watched(60);
        assert!(cache.get(&id("acme")).is_none());
        cache.insert(id("acme"), None, cache.generation(&id("acme")));
        assert!(matches!(cache.get(&id("acme")), Some(None)));
        cache.changed(&id("acme"));
        assert!(cache.get(&id("acme")).is_none());
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn zero_ttl_disables_the_cache() {
        let cache = watched(0);
        cache.insert(id("acme"), None, cache.generation(&id("acme")));
        assert!(cache.get(&id("acme")).is_none());
    }

    #[test]
    fn a_read_crossed_by_a_change_is_not_kept() {
        let cache = watched(60);
        let since = cache.generation(&id("acme"));
        cache.apply(&Change::Removed(id("acme")));
        cache.insert(id("acme"), None, since);
        assert!(cache.get(&id("acme")).is_none());
    }

    #[test]
    fn changes_made_while_the_identifiers_are_read_are_not_lost() {
        let cache = watched(60);
        cache.reading_known();
        // Announced while the read runs, which did not see them.
        cache.apply(&Change::Written {
            identifier: id("newco"),
            version: 1,
        });
        cache.apply(&Change::Removed(id("gone")));
        cache.set_known([id("acme"), id("gone")].into_iter().collect());
        assert_eq!(cache.is_known(&id("newco")), Some(true));
        assert_eq!(cache.is_known(&id("acme")), Some(true));
        assert_eq!(cache.is_known(&id("gone")), Some(false));
        assert_eq!(cache.is_known(&id("ghost")), Some(false));
    }

    #[test]
    fn without_announcements_entries_are_trusted_a_second() {
        let cache = TenantCache::new(Duration::from_secs(60));
        cache.insert(id("acme"), None, cache.generation(&id("acme")));
        assert!(cache.get(&id("acme")).is_some());
        std::thread::sleep(UNWATCHED_TRUST);
        assert!(cache.get(&id("acme")).is_none());
    }

    #[test]
    fn payloads_parse_into_changes_and_nothing_else_does() {
        assert_eq!(
            Change::parse("acme 1700000000000001"),
            Some(Change::Written {
                identifier: id("acme"),
                version: 1_700_000_000_000_001
            })
        );
        assert_eq!(Change::parse("acme"), Some(Change::Removed(id("acme"))));
        for bad in ["", "Acme 1", "acme x", "acme 1 2", "acme  1"] {
            assert_eq!(Change::parse(bad), None, "{bad:?}");
        }
    }
}
