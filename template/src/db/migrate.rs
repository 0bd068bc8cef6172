//! Runs embedded diesel migrations on one connection whose `search_path` selects where
//! they apply: the control schema, or one tenant's schema. Each schema records its own
//! `__diesel_schema_migrations`.
//!
//! diesel_migrations is synchronous: it runs in `spawn_blocking` on the database runtime
//! through `AsyncConnectionWrapper` (diesel-async's async harness panics on the
//! current-thread runtimes actix uses). A session advisory lock per target keeps two
//! processes from migrating the same schema at once.

use diesel::RunQueryDsl;
use diesel::sql_types::Text;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use tokio::runtime::Handle;

use super::connect::{ConnectError, connect};
use super::tls::PgConfig;
use crate::domain::SqlIdentifier;

pub const CONTROL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/control");

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database runtime: {0}")]
    Runtime(String),
    /// The owner's URL gives no session of its own (a pooler in transaction mode).
    #[error("{0}")]
    NoSession(String),
}

/// Applies the pending `migrations` on a new connection with `config` (outside every
/// pool, opened on `runtime`), holding an advisory lock named `lock_name`. `before`
/// (e.g. `CREATE SCHEMA IF NOT EXISTS`) and `after` (grants) run under the same lock.
/// Returns the versions it applied.
pub async fn run_pending(
    runtime: &Handle,
    config: PgConfig,
    migrations: EmbeddedMigrations,
    lock_name: String,
    before: Vec<String>,
    after: Vec<String>,
) -> Result<Vec<String>, MigrateError> {
    let conn = connect(config, runtime, None, None).await?;
    runtime
        .spawn_blocking(move || {
            let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
                AsyncConnectionWrapper::from(conn.into_inner());
            // Released when the connection closes at the end of this block.
            diesel::sql_query("SELECT pg_advisory_lock(hashtext($1))")
                .bind::<Text, _>(&lock_name)
                .execute(&mut conn)?;
            for sql in before {
                diesel::sql_query(sql).execute(&mut conn)?;
            }
            let applied: Vec<String> = conn
                .run_pending_migrations(migrations)
                .map_err(|e| MigrateError::Migration(e.to_string()))?
                .iter()
                .map(ToString::to_string)
                .collect();
            for sql in after {
                diesel::sql_query(sql).execute(&mut conn)?;
            }
            Ok(applied)
        })
        .await
        .map_err(|e| MigrateError::Runtime(e.to_string()))?
}

/// What the application role needs on the tables of `schema` (quoted) owned by the
/// migration role: data access, nothing else (no DDL, no ownership).
pub fn grants_on_schema(schema: &str, app_role: &SqlIdentifier) -> Vec<String> {
    let role = app_role.quoted();
    vec![
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
        format!("REVOKE ALL ON TABLE {schema}.__diesel_schema_migrations FROM {role}"),
    ]
}
