//! Moving a tenant's schema to another server (`tenant move`), step by step; each step is
//! safe to repeat, and `tenancy.tenant_moves` records how far a move got.
//!
//! The tenants of a server share its connections, so a move cannot end the application
//! role's sessions there as a database's move does: the old schema is sealed instead.
//! Each of its tables gets row-level security policies that fail every read and write
//! with "tenant moved to another server", which the service answers 503 (retry): a
//! replica that has not heard of the move yet is refused, never served the old copy,
//! and a write that waited on the move's lock fails once the lock is let go.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use tokio_postgres::Client;

use super::{DISTRIBUTED_SCHEMA, SchemaName, SchemaStrategy, TENANT_MIGRATIONS};
use crate::db::migrate::{self, grants_on_schema};
use crate::domain::{Isolation, ServerAddress, SqlIdentifier, Tenant};
use crate::tenancy::isolation::copy::{TableCopy, copy_tables, tables_in_order};
use crate::tenancy::isolation::moving::{
    self, Move, PlaceError, Relocate, check_not_switched, control, copy_failed, current_server,
    forget_move, lock_against_writes, owner_client, quote_literal, record_move, resumed, switch,
};
use crate::tenancy::isolation::{Context, server_name};

/// The policies that seal an old copy's tables, and the function they call: a permissive
/// one (no row passes without it) and a restrictive one (none passes without it either,
/// whatever permissive policy of the table's own lets it through).
const SEAL_POLICIES: [(&str, &str); 2] = [
    ("tenancy_moved", "PERMISSIVE"),
    ("tenancy_moved_restrictive", "RESTRICTIVE"),
];
const SEAL_FUNCTION: &str = "tenancy_moved";

/// `tenant`'s schema, as the identifier moves record.
fn storage_of(tenant: &Tenant) -> Result<SqlIdentifier, PlaceError> {
    let schema = SchemaName::for_tenant(&tenant.identifier);
    SqlIdentifier::parse(schema.as_str()).map_err(PlaceError::Invalid)
}

impl SchemaStrategy {
    /// Drops the move's copy on its target if there is one: only a schema marked with
    /// this move's marker, never one that was there before.
    async fn drop_copy(&self, ctx: &Context, moving: &Move) -> Result<(), PlaceError> {
        let there = owner_client(ctx, &self.servers, moving.to.as_ref()).await?;
        let marked = there
            .query(
                "SELECT 1 FROM pg_namespace n \
                 WHERE n.nspname = $1 AND obj_description(n.oid, 'pg_namespace') = $2",
                &[&moving.storage.as_str(), &moving.marker()],
            )
            .await
            .map_err(copy_failed)?;
        if !marked.is_empty() {
            drop_schema(&there, &moving.storage).await?;
        }
        Ok(())
    }
}

impl Relocate for SchemaStrategy {
    fn storage(&self) -> &'static str {
        "schema"
    }

    async fn unfinished_move(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<Option<String>, PlaceError> {
        let under_way = moving::find_move(conn, tenant, storage_of(tenant)?).await?;
        Ok(under_way.as_ref().map(Move::unfinished))
    }

    /// A schema of that name already on `to` is refused.
    async fn start_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        to: Option<&ServerAddress>,
    ) -> Result<Move, PlaceError> {
        crate::tenancy::isolation::ensure(tenant, Isolation::Schema)
            .map_err(PlaceError::Invalid)?;
        if let Some(to) = to {
            self.servers.check(to).map_err(PlaceError::Invalid)?;
        }
        let storage = storage_of(tenant)?;
        let mut control = control(ctx).await?;
        if let Some(under_way) = moving::find_move(&mut control, tenant, storage.clone()).await? {
            return resumed(under_way, tenant, to);
        }
        let now = current_server(&mut control, tenant, to).await?;
        let from = now.as_ref();
        // A schema of that name there may be this very one under another address, or a
        // stranger's: never written into, never dropped.
        let there = owner_client(ctx, &self.servers, to).await?;
        if schema_exists(&there, &storage).await? {
            return Err(PlaceError::Conflict(format!(
                "{} already has a schema {}: it may be this tenant's under another address, \
                 or another's; drop it or choose another server",
                server_name(to),
                storage.quoted()
            )));
        }
        record_move(&mut control, tenant, storage, from, to).await
    }

    /// The schema is created, marked and migrated in one transaction: one of that name
    /// found there (not this move's) fails it.
    async fn prepare_copy(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        self.drop_copy(ctx, moving).await?;
        let schema = moving.storage.quoted();
        let grants = ctx
            .app_role
            .as_ref()
            .map(|role| grants_on_schema(&schema, role))
            .unwrap_or_default();
        let target = migrate::Target {
            search_path: Some(schema.clone()),
            lock_name: format!("migrate:{}", moving.storage.as_str()),
            before: vec![
                DISTRIBUTED_SCHEMA.to_owned(),
                format!("CREATE SCHEMA {schema}"),
                format!(
                    "COMMENT ON SCHEMA {schema} IS {}",
                    quote_literal(&moving.marker())
                ),
            ],
            after: grants,
        };
        let owner = (self.servers)
            .owner_config(ctx, moving.to.as_ref())
            .map_err(PlaceError::Invalid)?;
        let on = (moving.to.as_ref(), &owner);
        let made = (self.sessions)
            .run_pending(&ctx.runtime, on, TENANT_MIGRATIONS, target)
            .await;
        made.map(drop).map_err(|e| {
            PlaceError::Copy(format!(
                "creating schema {schema} for tenant '{}' on {}: {e}",
                tenant.identifier,
                server_name(moving.to.as_ref())
            ))
        })
    }

    /// The source's tables are locked against writes (`EXCLUSIVE`: reads go on) for the
    /// whole copy, and sealed before they are let go.
    async fn copy_and_switch(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
        lock_within: Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        let schema = &moving.storage;
        let source = owner_client(ctx, &self.servers, moving.from.as_ref()).await?;
        let target = owner_client(ctx, &self.servers, moving.to.as_ref()).await?;
        lock_against_writes(&source, schema.as_str(), lock_within).await?;
        target.batch_execute("BEGIN").await.map_err(copy_failed)?;
        let copied = copy_tables(&source, schema.as_str(), &target, &schema.quoted())
            .await
            .map_err(PlaceError::Copy)?;
        target.batch_execute("COMMIT").await.map_err(copy_failed)?;
        seal(&source, schema).await?;
        source.batch_execute("COMMIT").await.map_err(copy_failed)?;
        drop(source);
        let update = "UPDATE tenancy.tenants SET server = $2 WHERE id = $1";
        switch(ctx, tenant, moving, update).await?;
        Ok(copied)
    }

    /// The old schema was sealed before the switch: sealed again (a resumed move may find
    /// a copy that an operator opened).
    async fn close_old(
        &self,
        ctx: &Context,
        _tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let there = owner_client(ctx, &self.servers, moving.from.as_ref()).await?;
        there.batch_execute("BEGIN").await.map_err(copy_failed)?;
        seal(&there, &moving.storage).await?;
        there.batch_execute("COMMIT").await.map_err(copy_failed)
    }

    async fn finish_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let there = owner_client(ctx, &self.servers, moving.from.as_ref()).await?;
        drop_schema(&there, &moving.storage).await?;
        forget_move(ctx, tenant).await
    }

    async fn abandon_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        check_not_switched(ctx, tenant, moving).await?;
        let source = owner_client(ctx, &self.servers, moving.from.as_ref()).await?;
        unseal(&source, &moving.storage).await?;
        self.drop_copy(ctx, moving).await?;
        forget_move(ctx, tenant).await
    }
}

/// Seals `schema` (on `owner`, in its transaction): every table gets the policies that
/// fail each read and write of it, for every role but a superuser. Compared with `ctid`,
/// the (stable) function is called when a scan starts, so a read of an empty table fails
/// too. Safe to repeat; nothing when the schema is gone.
async fn seal(owner: &Client, schema: &SqlIdentifier) -> Result<(), PlaceError> {
    let quoted = schema.quoted();
    if !schema_exists(owner, schema).await? {
        return Ok(());
    }
    let mut sql = vec![format!(
        "CREATE OR REPLACE FUNCTION {quoted}.{SEAL_FUNCTION}() RETURNS tid \
         LANGUAGE plpgsql STABLE AS $seal$ BEGIN \
         RAISE EXCEPTION 'tenant moved to another server' \
         USING HINT = 'the registry names its new server: retry'; END $seal$"
    )];
    for table in tables_in_order(owner, schema.as_str())
        .await
        .map_err(PlaceError::Copy)?
    {
        let table = &table.quoted;
        for (policy, kind) in SEAL_POLICIES {
            sql.push(format!("DROP POLICY IF EXISTS {policy} ON {table}"));
            sql.push(format!(
                "CREATE POLICY {policy} ON {table} AS {kind} \
                 USING (ctid = {quoted}.{SEAL_FUNCTION}()) \
                 WITH CHECK (ctid = {quoted}.{SEAL_FUNCTION}())"
            ));
        }
        sql.push(format!(
            "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"
        ));
    }
    owner
        .batch_execute(&sql.join("; "))
        .await
        .map_err(copy_failed)
}

/// Undoes [`seal`] on `schema` (a move given up after it): its policies and function go,
/// and row-level security is turned off again on each table that has no policy of its own.
async fn unseal(owner: &Client, schema: &SqlIdentifier) -> Result<(), PlaceError> {
    let quoted = schema.quoted();
    let ours: Vec<&str> = SEAL_POLICIES.iter().map(|(policy, _)| *policy).collect();
    let sealed = owner
        .query(
            "SELECT DISTINCT format('%I.%I', n.nspname, c.relname), \
               NOT EXISTS (SELECT 1 FROM pg_policy o WHERE o.polrelid = c.oid \
                           AND o.polname <> ALL ($2)) \
             FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND p.polname = ANY ($2)",
            &[&schema.as_str(), &ours],
        )
        .await
        .map_err(copy_failed)?;
    let mut sql = vec!["BEGIN".to_owned()];
    for row in sealed {
        let (table, alone): (String, bool) = (row.get(0), row.get(1));
        for policy in &ours {
            sql.push(format!("DROP POLICY IF EXISTS {policy} ON {table}"));
        }
        if alone {
            sql.push(format!(
                "ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY"
            ));
        }
    }
    sql.push(format!(
        "DROP FUNCTION IF EXISTS {quoted}.{SEAL_FUNCTION}()"
    ));
    sql.push("COMMIT".to_owned());
    owner
        .batch_execute(&sql.join("; "))
        .await
        .map_err(copy_failed)
}

/// Drops `schema` and everything in it, if it is there.
async fn drop_schema(owner: &Client, schema: &SqlIdentifier) -> Result<(), PlaceError> {
    let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted());
    owner.batch_execute(&drop).await.map_err(copy_failed)
}

/// Whether `schema` is in the database `owner` is connected to.
async fn schema_exists(owner: &Client, schema: &SqlIdentifier) -> Result<bool, PlaceError> {
    let found = owner
        .query(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&schema.as_str()],
        )
        .await
        .map_err(copy_failed)?;
    Ok(!found.is_empty())
}
