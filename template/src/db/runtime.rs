//! The runtime that owns every PostgreSQL connection's I/O task.
//!
//! actix-web runs each worker on its own current-thread runtime, and a tokio-postgres
//! connection's driver task stays on the runtime that spawned it: a connection opened by
//! a worker that later stops would fail with "connection closed" in another worker.
//! Opening all connections (and building all pools) here avoids that.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

static DB_RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The handle of the database runtime, created on first use.
pub fn handle() -> std::io::Result<Handle> {
    if let Some(runtime) = DB_RUNTIME.get() {
        return Ok(runtime.handle().clone());
    }
    let runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("db-io")
        .enable_all()
        .build()?;
    if let Err(lost_race) = DB_RUNTIME.set(runtime) {
        // Another thread created it first; this one must not be dropped inside async code.
        lost_race.shutdown_background();
    }
    match DB_RUNTIME.get() {
        Some(runtime) => Ok(runtime.handle().clone()),
        None => Err(std::io::Error::other("database runtime not initialised")),
    }
}
