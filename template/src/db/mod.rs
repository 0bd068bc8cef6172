//! Connections to PostgreSQL: where they are opened, how many there may be, and how
//! migrations run.
//!
//! Every connection is opened on one dedicated multi-thread runtime ([`runtime`]), so
//! that a connection outlives the actix worker that asked for it.

pub mod manager;
pub mod migrate;
pub mod pools;
pub mod runtime;

pub use manager::{PgConn, PgManager, PoolError};
pub use pools::{ControlConnection, ControlPool, PoolRegistry, PoolStats, TenantConnection};
