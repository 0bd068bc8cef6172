//! What the service sees of its statements, through diesel's instrumentation hook on
//! every pooled connection (tenant and control pools):
//!
//! - statements slower than `TENANCY_SLOW_QUERY_MS` are logged at WARN (`slow statement`),
//!   with the statement's text without its bind values, how long it took, and, through
//!   the request's span, the tenant and the request id;
//! - failed statements are counted by kind, beside the pool's own failures
//!   ([`ErrorCounts`], shown by `/health` and `/metrics`);
//! - a statement this connection prepared and its server session does not know (see
//!   [`lost_statement`]) is reported to the pool: the session is someone else's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::result::{DatabaseErrorKind, Error};

/// Kinds of database errors, as `/metrics` labels them.
const KINDS: [&str; 10] = [
    "unreachable",
    "refused",
    "too_many_connections",
    "setup",
    "pool_timeout",
    "connection_lost",
    "statement_timeout",
    "constraint",
    "serialization",
    "other",
];

/// Database errors of one pool since start-up, by kind.
#[derive(Default)]
pub struct ErrorCounts([AtomicU64; KINDS.len()]);

impl ErrorCounts {
    /// Counts one error of `kind` (one of [`KINDS`]).
    pub fn count(&self, kind: &str) {
        let slot = KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(KINDS.len() - 1);
        self.0[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Every kind and its count.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        KINDS
            .iter()
            .zip(&self.0)
            .map(|(kind, n)| (*kind, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The kind of a failed statement.
fn statement_error_kind(error: &Error) -> &'static str {
    match error {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => "connection_lost",
        Error::DatabaseError(_, info) if info.message().contains("statement timeout") => {
            "statement_timeout"
        }
        Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::ExclusionViolation
            | DatabaseErrorKind::RestrictViolation,
            _,
        ) => "constraint",
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => "serialization",
        _ => "other",
    }
}

/// `Some(message)` when `error` says that a statement this connection prepared is unknown
/// to its server session. The service never closes a statement it prepared, and its
/// statements' names are unique in the process: the statement ran on another client's
/// session (a pooler in transaction mode).
pub fn lost_statement(error: &Error) -> Option<&str> {
    match error {
        Error::DatabaseError(_, info)
            if info.message().starts_with("prepared statement")
                && info.message().ends_with("does not exist") =>
        {
            Some(info.message())
        }
        _ => None,
    }
}

/// Told of a [`lost_statement`], with its message.
pub type OnLostStatement = Box<dyn Fn(&str) + Send + Sync>;

/// Installed on each pooled connection.
pub struct Observer {
    /// Statements that take longer are logged (`None`: none is).
    threshold: Option<Duration>,
    errors: Arc<ErrorCounts>,
    /// When each statement under way started (pipelined statements overlap).
    started: Vec<Instant>,
    on_lost_statement: Option<OnLostStatement>,
}

impl Observer {
    pub fn new(
        threshold: Option<Duration>,
        errors: Arc<ErrorCounts>,
        on_lost_statement: Option<OnLostStatement>,
    ) -> Self {
        Self {
            threshold,
            errors,
            started: Vec::new(),
            on_lost_statement,
        }
    }
}

/// The statement's SQL: diesel shows a statement as `<sql> -- binds: [...]`; the values
/// never reach the log.
fn without_binds(shown: &str) -> &str {
    shown.split(" -- binds: ").next().unwrap_or_default()
}

impl Instrumentation for Observer {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { .. } => self.started.push(Instant::now()),
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                if let Some(error) = error {
                    self.errors.count(statement_error_kind(error));
                    if let (Some(message), Some(report)) =
                        (lost_statement(error), &self.on_lost_statement)
                    {
                        report(message);
                    }
                }
                let (Some(started), Some(threshold)) = (self.started.pop(), self.threshold) else {
                    return;
                };
                let took = started.elapsed();
                if took >= threshold {
                    let shown = query.to_string();
                    tracing::warn!(
                        statement = without_binds(&shown),
                        duration_ms = took.as_millis() as u64,
                        failed = error.is_some(),
                        "slow statement"
                    );
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::Text;

    #[test]
    fn bind_values_never_reach_the_statement_text() {
        let query = diesel::select(
            diesel::dsl::sql::<Text>("upper(")
                .bind::<Text, _>("secret-value")
                .sql(")"),
        );
        let shown = diesel::debug_query::<diesel::pg::Pg, _>(&query).to_string();
        assert!(shown.contains("secret-value"), "{shown}");
        let statement = without_binds(&shown);
        assert!(!statement.contains("secret-value"), "{statement}");
        assert!(statement.contains("upper("), "{statement}");
    }
}
