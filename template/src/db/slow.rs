//! Statements slower than `TENANCY_SLOW_QUERY_MS` are logged at WARN (`slow statement`),
//! with the statement's text without its bind values, how long it took, and, through the
//! request's span, the tenant and the request id. diesel's instrumentation hook sees every
//! statement of a pooled connection (tenant and control pools).

use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent};

/// Installed on each pooled connection.
pub struct SlowStatements {
    threshold: Duration,
    /// When each statement under way started (pipelined statements overlap).
    started: Vec<Instant>,
}

impl SlowStatements {
    pub fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            started: Vec::new(),
        }
    }
}

/// The statement's SQL: diesel shows a statement as `<sql> -- binds: [...]`; the values
/// never reach the log.
fn without_binds(shown: &str) -> &str {
    shown.split(" -- binds: ").next().unwrap_or_default()
}

impl Instrumentation for SlowStatements {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { .. } => self.started.push(Instant::now()),
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                let Some(started) = self.started.pop() else {
                    return;
                };
                let took = started.elapsed();
                if took >= self.threshold {
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
