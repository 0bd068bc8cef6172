//! Runs embedded diesel migrations on one connection whose `search_path` selects where
//! they apply: the control schema, or one tenant's schema. Each schema records its own
//! `__diesel_schema_migrations`.
//!
//! diesel_migrations is synchronous: it runs in `spawn_blocking` on the database runtime
//! through `AsyncConnectionWrapper` (diesel-async's async harness panics on the
//! current-thread runtimes actix uses). One target is one transaction (one commit) under
//! an advisory lock that keeps two processes from migrating the same schema at once.
//!
//! [`pending_in`] says what a fleet of schemas lacks in a few statements, so that
//! `migrate` touches only the tenants with something to do.

use diesel::Connection;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::{Array, Nullable, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use tokio::runtime::Handle;

use super::connect::{ConnectError, PgConn, connect};
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
/// pool, opened on `runtime`), in one transaction holding an advisory lock named
/// `lock_name`. `before` (e.g. `CREATE SCHEMA IF NOT EXISTS`) and `after` (grants) run in
/// the same transaction. Returns the versions it applied.
pub async fn run_pending(
    runtime: &Handle,
    config: PgConfig,
    migrations: EmbeddedMigrations,
    lock_name: String,
    before: Vec<String>,
    after: Vec<String>,
) -> Result<Vec<String>, MigrateError> {
    let conn = connect(config, runtime, None, None).await?;
    let target = Target {
        search_path: None,
        lock_name,
        before,
        after,
    };
    run_on(runtime, conn, migrations, target).await?.0
}

/// Where and how migrations are applied.
pub struct Target {
    /// Set for the transaction only, quoted (`None`: the connection's own).
    pub search_path: Option<String>,
    /// The advisory lock held for the transaction.
    pub lock_name: String,
    /// Run first in the transaction (e.g. `CREATE SCHEMA IF NOT EXISTS`).
    pub before: Vec<String>,
    /// Run last in the transaction (grants).
    pub after: Vec<String>,
}

/// Applies the pending `migrations` on `conn` in one transaction (see [`run_pending`]);
/// gives the connection back with the outcome.
pub async fn run_on(
    runtime: &Handle,
    conn: PgConn,
    migrations: EmbeddedMigrations,
    target: Target,
) -> Result<(Result<Vec<String>, MigrateError>, PgConn), MigrateError> {
    let (conn, closed) = conn.into_parts();
    runtime
        .spawn_blocking(move || {
            let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
                AsyncConnectionWrapper::from(conn);
            use diesel::RunQueryDsl;

            // Each migration of the harness is a savepoint of this transaction.
            let result = conn.transaction(|conn| {
                if let Some(search_path) = &target.search_path {
                    diesel::sql_query("SELECT set_config('search_path', $1, true)")
                        .bind::<Text, _>(search_path)
                        .execute(conn)?;
                }
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind::<Text, _>(&target.lock_name)
                    .execute(conn)?;
                for sql in &target.before {
                    diesel::sql_query(sql).execute(conn)?;
                }
                let applied: Vec<String> = conn
                    .run_pending_migrations(migrations)
                    .map_err(|e| MigrateError::Migration(e.to_string()))?
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                for sql in &target.after {
                    diesel::sql_query(sql).execute(conn)?;
                }
                Ok(applied)
            });
            (result, PgConn::from_parts(conn.into_inner(), closed))
        })
        .await
        .map_err(|e| MigrateError::Runtime(e.to_string()))
}

/// The versions of `migrations`, oldest first.
pub fn versions(migrations: &EmbeddedMigrations) -> Result<Vec<String>, MigrateError> {
    let mut versions: Vec<String> = MigrationSource::<Pg>::migrations(migrations)
        .map_err(|e| MigrateError::Migration(e.to_string()))?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect();
    versions.sort();
    Ok(versions)
}

#[derive(diesel::QueryableByName)]
struct Applied {
    /// The versions recorded in the schema's `__diesel_schema_migrations`, comma-separated;
    /// `None` where it has none (or no such table, or no such schema).
    #[diesel(sql_type = Nullable<Text>)]
    versions: Option<String>,
}

/// Reads each schema's `__diesel_schema_migrations`, where it has one, in one statement
/// (`query_to_xml` runs the read per schema, server-side), in the order given.
const APPLIED_SQL: &str = "\
    SELECT CASE WHEN c.oid IS NOT NULL THEN (xpath('/row/v/text()', query_to_xml(format(\
        'SELECT string_agg(version, '','') AS v FROM %I.__diesel_schema_migrations', s.name), \
        false, true, '')))[1]::text END AS versions \
    FROM unnest($1::text[]) WITH ORDINALITY AS s(name, n) \
    LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = s.name \
    LEFT JOIN pg_catalog.pg_class c \
        ON c.relnamespace = ns.oid AND c.relname = '__diesel_schema_migrations' \
    ORDER BY s.n";

/// Schemas read by one statement of [`pending_in`].
const SCHEMAS_PER_STATEMENT: usize = 500;

/// For each of `schemas` (in the database of `config`, read as the owner), the versions
/// of `migrations` it has not applied, oldest first: all of them where the schema or its
/// record is missing. One connection, and one statement per 500 schemas; changes
/// nothing.
pub async fn pending_in(
    runtime: &Handle,
    config: PgConfig,
    migrations: &EmbeddedMigrations,
    schemas: &[String],
) -> Result<Vec<Vec<String>>, MigrateError> {
    use diesel_async::RunQueryDsl;

    if schemas.is_empty() {
        return Ok(Vec::new());
    }
    let expected = versions(migrations)?;
    let mut conn = connect(config, runtime, None, None).await?;
    let mut rows: Vec<Applied> = Vec::with_capacity(schemas.len());
    // A statement locks every table it reads until it ends: a batch stays well inside
    // the server's lock table (`max_locks_per_transaction` x connections; 6,400 by default).
    for batch in schemas.chunks(SCHEMAS_PER_STATEMENT) {
        rows.extend(
            diesel::sql_query(APPLIED_SQL)
                .bind::<Array<Text>, _>(batch)
                .load::<Applied>(&mut *conn)
                .await?,
        );
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let applied: Vec<&str> = row.versions.as_deref().unwrap_or("").split(',').collect();
            expected
                .iter()
                .filter(|v| !applied.contains(&v.as_str()))
                .cloned()
                .collect()
        })
        .collect())
}

/// [`pending_in`] for one schema.
pub async fn pending_in_schema(
    runtime: &Handle,
    config: PgConfig,
    migrations: &EmbeddedMigrations,
    schema: &str,
) -> Result<Vec<String>, MigrateError> {
    let schemas = [schema.to_owned()];
    let mut pending = pending_in(runtime, config, migrations, &schemas).await?;
    Ok(pending.pop().unwrap_or_default())
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
