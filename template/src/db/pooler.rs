//! Connection poolers in transaction mode (PgBouncer, Supavisor, RDS Proxy): how to tell
//! that a URL leads to one.
//!
//! Such a pooler hands each transaction of a client to whichever server session is free,
//! so what a client set on its session (a tenant's `search_path`, `app.tenant_id`) reaches
//! other clients. The check: two connections each set a value of their own on their
//! session and read it back, twice over, and their server sessions (`pg_backend_pid()`
//! and the server's start) must stay theirs. PostgreSQL, and a pooler in session mode,
//! always pass. PgBouncer in transaction mode fails: it gives a transaction the server
//! session released last, which is the other client's. A pooler that happened to give
//! each client its own session back every time would pass: the tenant pool checks the
//! session again at every re-scope (see `pool`).

use tokio::runtime::Handle;
use tokio_postgres::types::Type;

use super::connect::{ConnectError, bare};
use super::tls::PgConfig;

/// A server session: its process id, and when its server started (so a process id of
/// another server is another session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub pid: i32,
    /// `pg_postmaster_start_time()` in microseconds since the epoch.
    pub server_started: i64,
}

/// The session setting the check writes; nothing reads it.
const PROBE_SETTING: &str = "tenancy.pooler_probe";

/// `Ok(None)` when connections opened with `config` keep a server session each; else what
/// showed that they share them.
pub async fn shares_sessions(
    config: &PgConfig,
    runtime: &Handle,
) -> Result<Option<String>, ConnectError> {
    let a = bare(config.clone(), runtime).await?;
    let b = bare(config.clone(), runtime).await?;
    for round in 0..2 {
        let (value_a, value_b) = (format!("a{round}"), format!("b{round}"));
        let (_, first_a) = exchange(&a, Some(&value_a)).await?;
        let (_, first_b) = exchange(&b, Some(&value_b)).await?;
        let (read_a, then_a) = exchange(&a, None).await?;
        let (read_b, then_b) = exchange(&b, None).await?;
        let moved = [(first_a, then_a), (first_b, then_b)]
            .into_iter()
            .find(|(first, then)| first != then);
        let found = if first_a == first_b {
            Some(format!(
                "two connections ran on one server session (process {})",
                first_a.pid
            ))
        } else if let Some((first, then)) = moved {
            Some(format!(
                "one connection's statements ran on two server sessions (processes {} and {})",
                first.pid, then.pid
            ))
        } else if read_a != value_a || read_b != value_b {
            Some("a connection read a value that another connection had set".to_owned())
        } else {
            None
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Sets the probe setting to `value` on the session (or reads it, with `None`); returns the
/// setting and the session that ran the statement. One unnamed statement, in one flight.
async fn exchange(
    client: &tokio_postgres::Client,
    value: Option<&str>,
) -> Result<(String, Backend), ConnectError> {
    let sql = match value {
        Some(_) => {
            "SELECT set_config($1, $2, false), pg_backend_pid(), \
             (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8"
        }
        None => {
            "SELECT coalesce(current_setting($1, true), ''), pg_backend_pid(), \
             (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8"
        }
    };
    let value = value.unwrap_or_default();
    let params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = match sql.contains("$2") {
        true => vec![(&PROBE_SETTING, Type::TEXT), (&value, Type::TEXT)],
        false => vec![(&PROBE_SETTING, Type::TEXT)],
    };
    let row = client
        .query_typed(sql, &params)
        .await
        .map_err(|e| ConnectError::Probe(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| ConnectError::Probe("no row".into()))?;
    let setting: String = row
        .try_get(0)
        .map_err(|e| ConnectError::Probe(e.to_string()))?;
    let backend = Backend {
        pid: row
            .try_get(1)
            .map_err(|e| ConnectError::Probe(e.to_string()))?,
        server_started: row
            .try_get(2)
            .map_err(|e| ConnectError::Probe(e.to_string()))?,
    };
    Ok((setting, backend))
}
