//! Connections to PostgreSQL: how one is opened ([`connect`]), the pool that shares them
//! between tenants ([`pool`]), and how migrations run.
//!
//! Every connection is opened on one dedicated multi-thread runtime ([`runtime`]), so
//! that a connection outlives the actix worker that asked for it.

pub mod connect;
pub mod migrate;
pub mod observe;
pub mod pool;
pub mod runtime;
pub mod settings;
pub mod tls;

use pool::{Home, Pool, PoolError, PooledConnection};
use tls::PgConfig;

/// The schema of the tenant registry (the control plane).
pub const CONTROL_SCHEMA: &str = "tenancy";

/// A connection scoped to one tenant: the only way to reach tenant tables. Handlers get
/// it from the extractor in `tenancy::extract`.
pub struct TenantConnection(PooledConnection);

impl TenantConnection {
    pub(crate) fn new(conn: PooledConnection) -> Self {
        Self(conn)
    }
}

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

/// The control plane's pool (tenant registry, health, admin). Its connections have
/// `search_path=tenancy`, so an unqualified tenant table does not resolve on them.
#[derive(Clone)]
pub struct ControlPool {
    pool: Pool,
    config: PgConfig,
}

/// A connection of the control pool.
pub type ControlConnection = PooledConnection;

impl ControlPool {
    pub fn new(pool: Pool, config: PgConfig) -> Self {
        Self { pool, config }
    }

    pub async fn get(&self) -> Result<ControlConnection, PoolError> {
        self.pool
            .get(uuid::Uuid::nil(), Home::Shared, None, || async {
                Ok(self.config.clone())
            })
            .await
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// How its connections are opened.
    pub fn config(&self) -> &PgConfig {
        &self.config
    }
}
