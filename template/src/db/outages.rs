//! How this server words its outages. diesel's errors carry PostgreSQL's message but not
//! its SQLSTATE (`DatabaseErrorInformation` has no code; diesel-rs/diesel#5232 would add
//! one), and PostgreSQL writes that message in the language of `lc_messages`, which only a
//! superuser may change. So the service learns, once at start-up, the server's own words
//! for the two outages a running statement meets: a statement timeout (57014) and a session
//! ended by the server (57P01: a restart, a failover, `pg_terminate_backend`).
//! `error::is_outage` recognises them besides PostgreSQL's English words.

use std::sync::RwLock;

use diesel_async::{AsyncConnection, RunQueryDsl};

use super::connect::PgConn;

/// What the servers said, each in its language (empty until learned). Every server this
/// process learned from adds its words: they mean an outage in whichever language.
static LEARNED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Whether a server said `message` for an outage it was made to show at start-up.
pub fn learned(message: &str) -> bool {
    let learned = LEARNED.read().unwrap_or_else(|p| p.into_inner());
    learned.iter().any(|word| word == message)
}

/// Makes the server cancel a statement for its timeout on `conn`, then, unless `conn`
/// leads to a pooler in transaction mode (whose server session is not this
/// connection's alone), end the session: `conn` is closed afterwards. Keeps what it said.
pub async fn learn(mut conn: PgConn, end_session: bool) {
    let mut words = Vec::new();
    let timeout = conn
        .transaction::<(), diesel::result::Error, _>(async |conn| {
            diesel::sql_query("SELECT set_config('statement_timeout', '1', true)")
                .execute(conn)
                .await?;
            diesel::sql_query("SELECT pg_sleep(1)")
                .execute(conn)
                .await?;
            Ok(())
        })
        .await;
    words.extend(said(timeout));
    if end_session {
        let ended = diesel::sql_query("SELECT pg_terminate_backend(pg_backend_pid())")
            .execute(&mut *conn)
            .await;
        words.extend(said(ended.map(drop)));
    }
    tracing::debug!(words = ?words, "the server's words for its outages");
    let mut learned = LEARNED.write().unwrap_or_else(|p| p.into_inner());
    for word in words {
        if !learned.contains(&word) {
            learned.push(word);
        }
    }
}

/// The server's message, when it refused the statement.
fn said(result: diesel::QueryResult<()>) -> Option<String> {
    match result {
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::Unknown,
            info,
        )) => Some(info.message().to_owned()),
        _ => None,
    }
}
