//! Moving a tenant's rows to another server's shared tables (`tenant move`), step by
//! step; each step is safe to repeat, and `tenancy.tenant_moves` records how far a move
//! got.
//!
//! Other tenants keep using the old server's tables, so a move can neither end the
//! application role's sessions there nor seal the tables: it seals the tenant instead.
//! `tenancy.moved_away` lists the tenants that left a server, and every
//! tenant table's policy calls `tenancy.rls_tenant()`, which fails a read or write
//! of a tenant listed there with "tenant moved to another server", answered 503 (retry):
//! a replica that has not heard of the move yet is refused, never served the old rows,
//! and a write that waited on the move's lock fails once the lock is let go.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use tokio_postgres::Client;
use uuid::Uuid;

use super::{DATA_SCHEMA, RlsStrategy};
use crate::domain::{Isolation, ServerAddress, SqlIdentifier, Tenant};
use crate::tenancy::isolation::copy::{Table, TableCopy, stream_rows, tables_in_order};
use crate::tenancy::isolation::moving::{
    self, Move, PlaceError, Relocate, check_not_switched, control, copy_failed, current_server,
    forget_move, lock_against_writes, owner_client, record_move, resumed, switch,
};
use crate::tenancy::isolation::{Context, server_name};

/// The tenants that left a server (migrations/tenant_rls, `moves_between_servers`).
const MOVED_AWAY: &str = "tenancy.moved_away";
/// What every tenant table's policy must call for a move to seal the tenant's old rows.
const SEALING_FUNCTION: &str = "rls_tenant()";

/// The shared tables' schema, as the identifier moves record.
fn storage() -> Result<SqlIdentifier, PlaceError> {
    SqlIdentifier::parse(DATA_SCHEMA).map_err(PlaceError::Invalid)
}

impl Relocate for RlsStrategy {
    fn storage(&self) -> &'static str {
        "rows"
    }

    async fn unfinished_move(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<Option<String>, PlaceError> {
        let under_way = moving::find_move(conn, tenant, storage()?).await?;
        Ok(under_way.as_ref().map(Move::unfinished))
    }

    /// Refused: shared tables on either server whose policies cannot seal the tenant's
    /// rows (not migrated, or a table of your own without the policy), and rows of the
    /// tenant already on `to`.
    async fn start_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        to: Option<&ServerAddress>,
    ) -> Result<Move, PlaceError> {
        crate::tenancy::isolation::ensure(tenant, Isolation::Rls).map_err(PlaceError::Invalid)?;
        if let Some(to) = to {
            self.servers.check(to).map_err(PlaceError::Invalid)?;
        }
        let mut control = control(ctx).await?;
        if let Some(under_way) = moving::find_move(&mut control, tenant, storage()?).await? {
            return resumed(under_way, tenant, to);
        }
        let now = current_server(&mut control, tenant, to).await?;
        let from = now.as_ref();
        for server in [from, to] {
            let owner = owner_client(ctx, &self.servers, server).await?;
            check_sealable(&owner, server).await?;
        }
        let there = owner_client(ctx, &self.servers, to).await?;
        let found = tenant_rows(&there, tenant).await?;
        if found > 0 {
            return Err(PlaceError::Conflict(format!(
                "{} already has {found} rows of tenant '{}' in its shared tables (left there \
                 by hand?): delete them, or choose another server",
                server_name(to),
                tenant.identifier
            )));
        }
        record_move(&mut control, tenant, storage()?, from, to).await
    }

    /// The target's shared tables are there (checked when the move started): the rows go
    /// in at the switch, in one transaction.
    async fn prepare_copy(
        &self,
        ctx: &Context,
        _tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let there = owner_client(ctx, &self.servers, moving.to.as_ref()).await?;
        check_sealable(&there, moving.to.as_ref()).await
    }

    /// The source's shared tables are locked against writes (`EXCLUSIVE`: reads go on;
    /// every tenant of that server waits to write) for the whole copy; the tenant is
    /// sealed there before they are let go.
    async fn copy_and_switch(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
        lock_within: Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        let source = owner_client(ctx, &self.servers, moving.from.as_ref()).await?;
        let target = owner_client(ctx, &self.servers, moving.to.as_ref()).await?;
        lock_against_writes(&source, DATA_SCHEMA, lock_within).await?;
        // A resumed move may have sealed the tenant here already: unsealed in this
        // transaction only, so that the owner reads its rows.
        scope_to(&source, tenant).await?;
        let tables = tenant_tables(&source).await?;
        target.batch_execute("BEGIN").await.map_err(copy_failed)?;
        scope_to(&target, tenant).await?;
        // Rows of the tenant there were left by this move (it refused any at its start).
        delete_rows(&target, &tables, tenant).await?;
        let copied = copy_rows(&source, &target, &tables, tenant).await?;
        follow_sequences(&source, &target).await?;
        seal_locally(&target, tenant.id, false).await?;
        target.batch_execute("COMMIT").await.map_err(copy_failed)?;
        seal_locally(&source, tenant.id, true).await?;
        source.batch_execute("COMMIT").await.map_err(copy_failed)?;
        drop(source);
        let update = "UPDATE tenancy.tenants SET server = $2 WHERE id = $1";
        switch(ctx, tenant, moving, update).await?;
        Ok(copied)
    }

    /// The tenant was sealed on the old server before the switch: sealed again (a resumed
    /// move may find that an operator lifted it).
    async fn close_old(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let there = owner_client(ctx, &self.servers, moving.from.as_ref()).await?;
        seal_locally(&there, tenant.id, true).await
    }

    /// Deletes the tenant's rows on the old server, which keeps it sealed.
    async fn finish_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let there = owner_client(ctx, &self.servers, moving.from.as_ref()).await?;
        remove_rows(&there, tenant).await?;
        forget_move(ctx, tenant).await
    }

    /// Lifts the seal on the old server and deletes what the move copied (the target
    /// keeps the tenant sealed: it is not served there).
    async fn abandon_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        check_not_switched(ctx, tenant, moving).await?;
        let source = owner_client(ctx, &self.servers, moving.from.as_ref()).await?;
        seal_locally(&source, tenant.id, false).await?;
        let target = owner_client(ctx, &self.servers, moving.to.as_ref()).await?;
        remove_rows(&target, tenant).await?;
        forget_move(ctx, tenant).await
    }
}

/// Refuses shared tables on `server` that a move cannot seal: no
/// `tenancy.moved_away` (not migrated), or a tenant table whose row-level
/// security is off or whose policy does not call `tenancy.rls_tenant()`.
async fn check_sealable(owner: &Client, server: Option<&ServerAddress>) -> Result<(), PlaceError> {
    let migrated = owner
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&"tenancy.moved_away"],
        )
        .await
        .map_err(copy_failed)?;
    if !migrated.get::<_, bool>(0) {
        return Err(PlaceError::Conflict(format!(
            "the shared tables on {} lack this build's migrations: run `migrate` first",
            server_name(server)
        )));
    }
    let unsealable = owner
        .query(
            "SELECT c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
                           AND a.attname = 'tenant_id' AND NOT a.attisdropped) \
               AND NOT (c.relrowsecurity AND c.relforcerowsecurity AND EXISTS ( \
                 SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polcmd = '*' \
                   AND p.polpermissive \
                   AND strpos(pg_get_expr(p.polqual, p.polrelid), $2) > 0 \
                   AND strpos(pg_get_expr(p.polwithcheck, p.polrelid), $2) > 0)) \
             ORDER BY 1",
            &[&DATA_SCHEMA, &SEALING_FUNCTION],
        )
        .await
        .map_err(copy_failed)?;
    if unsealable.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = unsealable.iter().map(|row| row.get(0)).collect();
    Err(PlaceError::Conflict(format!(
        "on {}, tenant tables {} lack the forced policy `tenant_id = tenancy.rls_tenant()` (see \
         the migration moves_between_servers): a replica that has not heard of a move could \
         read or write the tenant's old rows there; add it, then move",
        server_name(server),
        names.join(", ")
    )))
}

/// The tables of the shared schema that hold tenants' rows (a `tenant_id` column), each
/// after those it references.
async fn tenant_tables(owner: &Client) -> Result<Vec<Table>, PlaceError> {
    let tables = tables_in_order(owner, DATA_SCHEMA)
        .await
        .map_err(PlaceError::Copy)?;
    Ok(tables
        .into_iter()
        .filter(|table| table.columns.iter().any(|c| c == "tenant_id"))
        .collect())
}

/// Scopes `owner`'s transaction to `tenant` (the forced policies bind the owner too), the
/// tenant unsealed for this transaction alone.
async fn scope_to(owner: &Client, tenant: &Tenant) -> Result<(), PlaceError> {
    seal_locally(owner, tenant.id, false).await?;
    owner
        .execute(
            "SELECT set_config('app.tenant_id', $1, true)",
            &[&tenant.id.to_string()],
        )
        .await
        .map_err(copy_failed)
        .map(drop)
}

/// Lists `tenant` among those that left the server (`sealed`), or takes it off the list,
/// in `owner`'s transaction if one is open.
async fn seal_locally(owner: &Client, tenant: Uuid, sealed: bool) -> Result<(), PlaceError> {
    let sql = if sealed {
        format!(
            "INSERT INTO {MOVED_AWAY} (moved_tenant) VALUES ($1::text::uuid) \
             ON CONFLICT (moved_tenant) DO UPDATE SET moved_at = now()"
        )
    } else {
        format!("DELETE FROM {MOVED_AWAY} WHERE moved_tenant = $1::text::uuid")
    };
    owner
        .execute(&sql, &[&tenant.to_string()])
        .await
        .map_err(copy_failed)
        .map(drop)
}

/// How many rows `tenant` has in the shared tables `owner` reaches.
async fn tenant_rows(owner: &Client, tenant: &Tenant) -> Result<i64, PlaceError> {
    owner.batch_execute("BEGIN").await.map_err(copy_failed)?;
    scope_to(owner, tenant).await?;
    let mut rows = 0;
    for table in tenant_tables(owner).await? {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE tenant_id = $1::text::uuid",
            table.quoted
        );
        let found = owner
            .query_one(&sql, &[&tenant.id.to_string()])
            .await
            .map_err(copy_failed)?;
        rows += found.get::<_, i64>(0);
    }
    owner.batch_execute("ROLLBACK").await.map_err(copy_failed)?;
    Ok(rows)
}

/// Deletes `tenant`'s rows from `tables` in `owner`'s transaction (scoped to it), each
/// table before those it references.
async fn delete_rows(owner: &Client, tables: &[Table], tenant: &Tenant) -> Result<(), PlaceError> {
    for table in tables.iter().rev() {
        let sql = format!(
            "DELETE FROM {} WHERE tenant_id = $1::text::uuid",
            table.quoted
        );
        owner
            .execute(&sql, &[&tenant.id.to_string()])
            .await
            .map_err(|e| PlaceError::Copy(format!("deleting from table {}: {e}", table.name)))?;
    }
    Ok(())
}

/// Deletes `tenant`'s rows from the shared tables `owner` reaches, and leaves it sealed
/// there, in one transaction.
async fn remove_rows(owner: &Client, tenant: &Tenant) -> Result<(), PlaceError> {
    owner.batch_execute("BEGIN").await.map_err(copy_failed)?;
    scope_to(owner, tenant).await?;
    let tables = tenant_tables(owner).await?;
    delete_rows(owner, &tables, tenant).await?;
    seal_locally(owner, tenant.id, true).await?;
    owner.batch_execute("COMMIT").await.map_err(copy_failed)
}

/// Copies `tenant`'s rows of each of `tables` from `source` into the same table on
/// `target` (both in transactions scoped to the tenant): `COPY` out of the source, into a
/// temporary table on the target, then `INSERT ... SELECT` (row-level security allows no
/// `COPY` into a table it binds). Every table's rows are counted on both sides.
async fn copy_rows(
    source: &Client,
    target: &Client,
    tables: &[Table],
    tenant: &Tenant,
) -> Result<Vec<TableCopy>, PlaceError> {
    let id = tenant.id.to_string();
    let mut copied = Vec::with_capacity(tables.len());
    for table in tables {
        let failed = |e: tokio_postgres::Error| {
            PlaceError::Copy(format!("copying table {}: {e}", table.name))
        };
        let columns = table.columns.join(", ");
        let expected: i64 = source
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE tenant_id = $1::text::uuid",
                    table.quoted
                ),
                &[&id],
            )
            .await
            .map_err(failed)?
            .get(0);
        // The same name in pg_temp: a table of this transaction alone, dropped with it.
        let staged = format!("pg_temp.{}", table.ident);
        target
            .batch_execute(&format!(
                "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS \
                 SELECT {columns} FROM {} WITH NO DATA",
                table.ident, table.quoted
            ))
            .await
            .map_err(failed)?;
        // The id is a UUID's text: hexadecimal digits and dashes.
        let query = format!(
            "SELECT {columns} FROM {} WHERE tenant_id = '{id}'::uuid",
            table.quoted
        );
        stream_rows((source, &query), target, &format!("{staged} ({columns})"))
            .await
            .map_err(failed)?;
        let rows = target
            .execute(
                &format!(
                    "INSERT INTO {} ({columns}) SELECT {columns} FROM {staged}",
                    table.quoted
                ),
                &[],
            )
            .await
            .map_err(failed)?;
        if i64::try_from(rows).ok() != Some(expected) {
            return Err(PlaceError::Copy(format!(
                "table {}: {expected} rows of the tenant in the source, {rows} copied",
                table.name
            )));
        }
        copied.push(TableCopy {
            table: table.name.clone(),
            rows,
        });
    }
    Ok(copied)
}

/// Moves each sequence of the shared schema on `target` at least as far as on `source`,
/// so that no value the tenant's copied rows hold is handed out again there.
async fn follow_sequences(source: &Client, target: &Client) -> Result<(), PlaceError> {
    let sequences = source
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences \
             WHERE schemaname = $1 AND last_value IS NOT NULL",
            &[&DATA_SCHEMA],
        )
        .await
        .map_err(copy_failed)?;
    for sequence in sequences {
        let (name, value): (String, i64) = (sequence.get(0), sequence.get(1));
        target
            .execute(
                "SELECT setval($1::regclass, greatest($2, coalesce(s.last_value, $2)), true) \
                 FROM pg_sequences s WHERE format('%I.%I', s.schemaname, s.sequencename) = $1",
                &[&name, &value],
            )
            .await
            .map_err(|e| PlaceError::Copy(format!("setting sequence {name}: {e}")))?;
    }
    Ok(())
}
