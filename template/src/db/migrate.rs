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

use super::manager::{PoolError, connect};
use super::runtime;

pub const CONTROL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/control");
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant");

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Connect(#[from] PoolError),
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database runtime: {0}")]
    Runtime(String),
}

/// Applies the pending `migrations` on a new connection opened with `config`, holding an
/// advisory lock named `lock_name`; `prepare` (e.g. `CREATE SCHEMA IF NOT EXISTS`) runs
/// first, under the lock. Returns the versions it applied.
pub async fn run_pending(
    config: tokio_postgres::Config,
    migrations: EmbeddedMigrations,
    lock_name: String,
    prepare: Option<String>,
) -> Result<Vec<String>, MigrateError> {
    let runtime = runtime::handle().map_err(|e| MigrateError::Runtime(e.to_string()))?;
    let conn = connect(config, &runtime).await?;
    runtime
        .spawn_blocking(move || {
            let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
                AsyncConnectionWrapper::from(conn);
            // Released when the connection closes at the end of this block.
            diesel::sql_query("SELECT pg_advisory_lock(hashtext($1))")
                .bind::<Text, _>(&lock_name)
                .execute(&mut conn)?;
            if let Some(sql) = prepare {
                diesel::sql_query(sql).execute(&mut conn)?;
            }
            let applied = conn
                .run_pending_migrations(migrations)
                .map_err(|e| MigrateError::Migration(e.to_string()))?;
            Ok(applied.iter().map(ToString::to_string).collect())
        })
        .await
        .map_err(|e| MigrateError::Runtime(e.to_string()))?
}
