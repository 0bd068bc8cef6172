//! Copying a tenant's database into an empty one with the same tables (`tenant move`):
//! table by table with `COPY ... (FORMAT binary)`, each table after those it references,
//! then the sequences; every table's rows are counted on both sides.

use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::PlaceError;

/// A table of the tenant's database, and its rows copied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
}

/// A table of a schema: its name, quoted alone and qualified, its columns (quoted;
/// generated ones left out, PostgreSQL computes them), and the tables it references.
pub(crate) struct Table {
    oid: i64,
    pub(crate) name: String,
    /// The name alone, quoted (`quote_ident`).
    pub(crate) ident: String,
    pub(crate) quoted: String,
    pub(crate) columns: Vec<String>,
    references: Vec<i64>,
}

/// The tables of `schema` (not diesel's record of migrations), each after the tables it
/// references.
pub(crate) async fn tables_in_order(source: &Client, schema: &str) -> Result<Vec<Table>, String> {
    let rows = source
        .query(
            "SELECT c.oid::int8, c.relname::text, quote_ident(c.relname), \
               format('%I.%I', n.nspname, c.relname), \
               coalesce((SELECT array_agg(quote_ident(a.attname::text) ORDER BY a.attnum) \
                  FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                   AND NOT a.attisdropped AND a.attgenerated = ''), '{}'::text[]), \
               coalesce((SELECT array_agg(DISTINCT f.confrelid::int8) FROM pg_constraint f \
                  WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid), \
                 '{}'::int8[]) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND c.relname <> '__diesel_schema_migrations' \
             ORDER BY c.relname",
            &[&schema],
        )
        .await
        .map_err(|e| format!("reading the tables: {e}"))?;
    let mut pending: Vec<Table> = rows
        .into_iter()
        .map(|row| Table {
            oid: row.get(0),
            name: row.get(1),
            ident: row.get(2),
            quoted: row.get(3),
            columns: row.get(4),
            references: row.get(5),
        })
        .collect();
    let known: Vec<i64> = pending.iter().map(|t| t.oid).collect();
    let mut ordered: Vec<Table> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = |t: &Table| {
            t.references
                .iter()
                .all(|r| !known.contains(r) || ordered.iter().any(|o| o.oid == *r))
        };
        let Some(next) = pending.iter().position(ready) else {
            let names: Vec<&str> = pending.iter().map(|t| t.name.as_str()).collect();
            return Err(format!(
                "tables {} reference each other in a circle: copy them by hand",
                names.join(", ")
            ));
        };
        ordered.push(pending.remove(next));
    }
    Ok(ordered)
}

/// Opens a transaction on `client` that holds `tables` (qualified, quoted) in lock `mode`:
/// `EXCLUSIVE` against writes (reads go on), `ACCESS EXCLUSIVE` against reads too.
/// Waits `within` at most for the transactions under way (then [`PlaceError::Busy`]); the
/// snapshot is taken after.
pub(crate) async fn begin_locked(
    client: &Client,
    tables: &[String],
    mode: &str,
    within: std::time::Duration,
) -> Result<(), PlaceError> {
    if tables.is_empty() {
        return Err(PlaceError::Copy("there is no table to copy".into()));
    }
    let locked = client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL lock_timeout = {}; \
             LOCK TABLE {} IN {mode} MODE",
            within.as_millis(),
            tables.join(", ")
        ))
        .await;
    match locked {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            Err(PlaceError::Busy(format!(
                "the tenant's tables are held by a transaction that did not end within {:.1} s \
             (a long query or an open transaction): the move was given up and changed \
             nothing; try again once it ends",
                within.as_secs_f64()
            )))
        }
        Err(e) => Err(PlaceError::Copy(format!(
            "locking the tenant's tables ({mode}): {e}"
        ))),
    }
}

/// Streams the rows `query` answers on `source` into `into` (a table and its columns) on
/// `target`, with `COPY ... (FORMAT binary)`; the rows copied.
pub(crate) async fn stream_rows(
    (source, query): (&Client, &str),
    target: &Client,
    into: &str,
) -> Result<u64, tokio_postgres::Error> {
    let out = source
        .copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
        .await?;
    let sink = target
        .copy_in(&format!("COPY {into} FROM STDIN (FORMAT binary)"))
        .await?;
    let mut out = std::pin::pin!(out);
    let mut sink = std::pin::pin!(sink);
    // `feed`, not `send`: the sink gathers rows into messages of a few kilobytes, where a
    // flush after every row would write each to the socket alone.
    while let Some(chunk) = out.try_next().await? {
        sink.feed(chunk).await?;
    }
    sink.as_mut().finish().await
}
{%- if isolation != "rls" %}

/// Copies every table of schema `schema` of `source` into the table of the same name
/// in `target`'s schema `into` (as SQL: `public`, or a quoted `SchemaName`; empty tables
/// of the same definition), then sets `target`'s sequences where `source`'s are. Run
/// `source` in a transaction that holds its tables still, and `target` in one that
/// commits when this returns.
pub async fn copy_tables(
    source: &Client,
    schema: &str,
    target: &Client,
    into: &str,
) -> Result<Vec<TableCopy>, String> {
    let mut copied = Vec::new();
    for table in tables_in_order(source, schema).await? {
        let failed = |e: tokio_postgres::Error| format!("copying table {}: {e}", table.name);
        let columns = table.columns.join(", ");
        let expected: i64 = source
            .query_one(&format!("SELECT count(*) FROM {}", table.quoted), &[])
            .await
            .map_err(failed)?
            .get(0);
        let rows = stream_rows(
            (source, &format!("SELECT {columns} FROM {}", table.quoted)),
            target,
            &format!("{into}.{} ({columns})", table.ident),
        )
        .await
        .map_err(failed)?;
        if i64::try_from(rows).ok() != Some(expected) {
            return Err(format!(
                "table {}: {expected} rows in the source, {rows} copied",
                table.name
            ));
        }
        copied.push(TableCopy {
            table: table.name,
            rows,
        });
    }
    let sequences = source
        .query(
            "SELECT format('%s.%I', $2::text, sequencename), last_value FROM pg_sequences \
             WHERE schemaname = $1 AND last_value IS NOT NULL",
            &[&schema, &into],
        )
        .await
        .map_err(|e| format!("reading the sequences: {e}"))?;
    for sequence in sequences {
        let (name, value): (String, i64) = (sequence.get(0), sequence.get(1));
        target
            .execute("SELECT setval($1::regclass, $2, true)", &[&name, &value])
            .await
            .map_err(|e| format!("setting sequence {name}: {e}"))?;
    }
    Ok(copied)
}
{%- endif %}
