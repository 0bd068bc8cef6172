//! The control pool, and the registry of per-tenant pools.
//!
//! A tenant's connections are opened with the tenant's scope in their start-up packet
//! (see `tenancy::isolation`), belong to that tenant's pool for their whole life and are
//! never handed to another tenant, so a request costs no extra statement for scoping and
//! a scope can never leak from one tenant to another.
//!
//! All tenant pools together never hold more than `max_total_connections` connections:
//! each connection holds a permit of one semaphore. When the cap is reached, the least
//! recently used pool whose connections are all idle is closed to make room; a request
//! that still gets no connection within `pool_timeout` is answered 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::manager::{ConnectTarget, ConnectionBudget, PgManager, PoolError};
use crate::config::DatabaseSettings;

/// The pool of the control plane (tenant registry, health, admin). Its connections have
/// `search_path=tenancy`, so an unqualified tenant table does not resolve on them.
pub type ControlPool = bb8::Pool<PgManager<Unlimited>>;
/// A connection checked out of the control pool.
pub type ControlConnection<'a> = bb8::PooledConnection<'a, PgManager<Unlimited>>;

/// A connection bound to one tenant, checked out of that tenant's pool.
pub struct TenantConnection(bb8::PooledConnection<'static, PgManager<TenantBudget>>);

impl std::ops::Deref for TenantConnection {
    type Target = diesel_async::AsyncPgConnection;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for TenantConnection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The control pool is not counted against the tenant cap.
pub enum Unlimited {}

impl ConnectionBudget for Unlimited {
    async fn acquire(&self, _wait: Duration) -> Result<OwnedSemaphorePermit, PoolError> {
        match *self {}
    }
}

/// Builds the control pool; connections are opened lazily.
pub fn control_pool(
    config: tokio_postgres::Config,
    settings: &DatabaseSettings,
    runtime: &Handle,
) -> ControlPool {
    let manager = PgManager::new(config.into(), None, settings.pool_timeout, runtime.clone());
    let _enter = runtime.enter();
    builder(settings, settings.control_pool_size, "control").build_unchecked(manager)
}

fn builder<M: bb8::ManageConnection<Error = PoolError>>(
    settings: &DatabaseSettings,
    max_size: u32,
    pool: &'static str,
) -> bb8::Builder<M> {
    bb8::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(0))
        .test_on_check_out(false)
        .connection_timeout(settings.pool_timeout)
        .idle_timeout(Some(settings.tenant_pool_idle_timeout))
        .max_lifetime(Some(settings.pool_recycle))
        .reaper_rate(
            (settings.tenant_pool_idle_timeout / 2)
                .clamp(Duration::from_secs(1), Duration::from_secs(30)),
        )
        .error_sink(Box::new(LogErrors(pool)))
}

/// bb8 reports connect errors only here (`get` only ever says "timed out").
#[derive(Debug, Clone, Copy)]
struct LogErrors(&'static str);

impl bb8::ErrorSink<PoolError> for LogErrors {
    fn sink(&self, error: PoolError) {
        match error {
            PoolError::PoolClosed => {}
            error => tracing::warn!(pool = self.0, error = %error, "database connection failed"),
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<PoolError>> {
        Box::new(*self)
    }
}

type TenantPool = bb8::Pool<PgManager<TenantBudget>>;

struct Entry {
    pool: TenantPool,
    /// Milliseconds since the registry started, at the last checkout.
    last_used: AtomicU64,
    /// Set when the pool leaves the registry: its pending connects give up at once, so
    /// the pool (and the permits of its idle connections) can be dropped.
    closed: AtomicBool,
}

impl Entry {
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

struct Shared {
    settings: DatabaseSettings,
    pools: RwLock<HashMap<Uuid, Arc<Entry>>>,
    cap: Arc<Semaphore>,
    started: Instant,
    runtime: Handle,
}

/// One small pool per tenant, created on first use, under one global connection cap.
#[derive(Clone)]
pub struct PoolRegistry {
    shared: Arc<Shared>,
}

/// What `/health` shows about tenant connections.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PoolStats {
    pub open_pools: usize,
    pub open_connections: u32,
    pub idle_connections: u32,
    pub max_total_connections: u32,
}

impl PoolRegistry {
    pub fn new(settings: DatabaseSettings, runtime: Handle) -> Self {
        let cap = Arc::new(Semaphore::new(settings.max_total_connections as usize));
        Self {
            shared: Arc::new(Shared {
                settings,
                pools: RwLock::new(HashMap::new()),
                cap,
                started: Instant::now(),
                runtime,
            }),
        }
    }

    /// Checks out a connection of `tenant`'s pool, creating the pool with `connect_target`
    /// (the tenant's scoped session settings) on first use; `connect_target` is awaited
    /// only then.
    pub async fn get(
        &self,
        tenant: Uuid,
        connect_target: impl Future<Output = Result<ConnectTarget, bb8::RunError<PoolError>>>,
    ) -> Result<TenantConnection, bb8::RunError<PoolError>> {
        let entry = self.entry(tenant, connect_target).await?;
        // Written at most every 100 ms: the LRU order needs no more, and a write on every
        // checkout would bounce the cache line between workers.
        let now = self.shared.now_millis();
        if now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) >= 100 {
            entry.last_used.store(now, Ordering::Relaxed);
        }
        entry.pool.get_owned().await.map(TenantConnection)
    }

    /// Closes `tenant`'s pool (its idle connections now, busy ones when they come back).
    pub fn close(&self, tenant: Uuid) {
        let removed = self.shared.write_pools().remove(&tenant);
        if let Some(entry) = removed {
            entry.close();
        }
    }

    pub fn stats(&self) -> PoolStats {
        let pools = self.shared.read_pools();
        let (mut open, mut idle) = (0, 0);
        for entry in pools.values() {
            let state = entry.pool.state();
            open += state.connections;
            idle += state.idle_connections;
        }
        PoolStats {
            open_pools: pools
                .values()
                .filter(|e| e.pool.state().connections > 0)
                .count(),
            open_connections: open,
            idle_connections: idle,
            max_total_connections: self.shared.settings.max_total_connections,
        }
    }

    async fn entry(
        &self,
        tenant: Uuid,
        connect_target: impl Future<Output = Result<ConnectTarget, bb8::RunError<PoolError>>>,
    ) -> Result<Arc<Entry>, bb8::RunError<PoolError>> {
        if let Some(entry) = self.shared.read_pools().get(&tenant).cloned() {
            return Ok(entry);
        }
        let target = connect_target.await?;
        let mut pools = self.shared.write_pools();
        if let Some(entry) = pools.get(&tenant) {
            return Ok(entry.clone());
        }
        // Forget pools whose connections have all idled out.
        let forget_before = self
            .shared
            .now_millis()
            .saturating_sub(self.shared.settings.tenant_pool_idle_timeout.as_millis() as u64);
        pools.retain(|_, e| {
            e.pool.state().connections > 0 || e.last_used.load(Ordering::Relaxed) > forget_before
        });

        let settings = &self.shared.settings;
        let entry = Arc::new_cyclic(|entry| {
            let budget = TenantBudget {
                registry: Arc::downgrade(&self.shared),
                pool: entry.clone(),
                tenant,
            };
            let manager = PgManager::new(
                target,
                Some(Arc::new(budget)),
                settings.pool_timeout,
                self.shared.runtime.clone(),
            );
            // The reaper task of the pool runs on the database runtime too.
            let _enter = self.shared.runtime.enter();
            let pool = builder(settings, settings.tenant_pool_max(), "tenant")
                // A connect that failed (cap reached, pool closed) is not retried: the
                // request waiting for it gets 503 after `pool_timeout`.
                .retry_connection(false)
                .build_unchecked(manager);
            Entry {
                pool,
                last_used: AtomicU64::new(self.shared.now_millis()),
                closed: AtomicBool::new(false),
            }
        });
        pools.insert(tenant, entry.clone());
        Ok(entry)
    }
}

impl Shared {
    fn now_millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn read_pools(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, Arc<Entry>>> {
        self.pools
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_pools(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uuid, Arc<Entry>>> {
        self.pools
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes the least recently used pool (not `except`'s) whose open connections are
    /// all idle. Returns whether one was closed.
    fn close_least_recently_used_idle(&self, except: Uuid) -> bool {
        let mut pools = self.write_pools();
        let victim = pools
            .iter()
            .filter(|(id, _)| **id != except)
            .filter(|(_, e)| {
                let state = e.pool.state();
                state.connections > 0 && state.connections == state.idle_connections
            })
            .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                let closed = pools.remove(&id);
                drop(pools);
                if let Some(entry) = closed {
                    entry.close();
                }
                tracing::debug!(tenant.id = %id, "closed an idle tenant pool to stay under the connection cap");
                true
            }
            None => false,
        }
    }
}

/// The permit source of one tenant's pool.
pub struct TenantBudget {
    registry: Weak<Shared>,
    pool: Weak<Entry>,
    tenant: Uuid,
}

impl TenantBudget {
    fn pool_closed(&self) -> bool {
        self.pool
            .upgrade()
            .is_none_or(|entry| entry.closed.load(Ordering::Relaxed))
    }
}

impl ConnectionBudget for TenantBudget {
    async fn acquire(&self, wait: Duration) -> Result<OwnedSemaphorePermit, PoolError> {
        let deadline = Instant::now() + wait;
        loop {
            if self.pool_closed() {
                return Err(PoolError::PoolClosed);
            }
            let Some(shared) = self.registry.upgrade() else {
                return Err(PoolError::PoolClosed);
            };
            if let Ok(permit) = shared.cap.clone().try_acquire_owned() {
                return Ok(permit);
            }
            if shared.close_least_recently_used_idle(self.tenant) {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PoolError::AtCapacity(shared.settings.max_total_connections));
            }
            // Busy pools become idle without telling anyone: look again shortly.
            let step = (deadline - now).min(Duration::from_millis(10));
            let cap = shared.cap.clone();
            drop(shared);
            if let Ok(Ok(permit)) = tokio::time::timeout(step, cap.acquire_owned()).await {
                return Ok(permit);
            }
        }
    }
}
