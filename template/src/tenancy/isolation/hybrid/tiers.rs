//! Changing a tenant's tier (`tenant move --isolation`), one step at a time: up, `rls`
//! to `schema` (its rows leave the shared tables for a schema of its own, in the same
//! database), `schema` to `database` (its schema's tables go to a database of its own,
//! on any server of `TENANCY_DATABASE_SERVERS`); and down the same way back.
//!
//! Each switch holds the tenant's tables in the old place against writes while it
//! copies them to the new one, names the new tier in the registry and leaves the old
//! place refusing the tenant: a replica that has not heard of the switch yet gets an
//! error to retry (503), never an answer from the old place or from nowhere.
//! Interrupted before it names the new tier, a switch changed nothing.

use std::time::Duration;

use tokio_postgres::Client;

use super::HybridStrategy;
use crate::db::pool::TENANT_SETTING;
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::isolation::copy::{Table, TableCopy, begin_locked, tables_in_order};
use crate::tenancy::isolation::rls::DATA_SCHEMA;
use crate::tenancy::isolation::schema::SchemaName;
use crate::tenancy::isolation::{Context, PlaceError, ServerAddress, Strategy};

/// Where a change of tier copies a tenant to, made ready by [`HybridStrategy::prepare_tier`].
pub enum TierTarget {
    /// The shared tables (nothing to make).
    Rls,
    /// Its schema, in the shared database.
    Schema,
    /// Its database, on `server` (`None`: the default server).
    Database {
        name: SqlIdentifier,
        server: Option<ServerAddress>,
    },
}

/// `tenant` as it is in tier `tier` (the strategies check the tier they are given): the
/// `schema` and `rls` tiers are on the default server; in tier `database`, the tenant's
/// database record says where it is.
pub fn in_tier(tenant: &Tenant, tier: Isolation) -> Tenant {
    Tenant {
        isolation: tier,
        server: (tier == Isolation::Database)
            .then(|| tenant.server.clone())
            .flatten(),
        ..tenant.clone()
    }
}

pub(super) fn failed(error: tokio_postgres::Error) -> PlaceError {
    PlaceError::Copy(error.to_string())
}

/// Names tier `to` in the registry for `tenant`, if it is still in tier `from`, and
/// commits `owner`'s transaction (the switch); refused if another changed its tier.
pub(super) async fn commit_tier(
    owner: &Client,
    tenant: &Tenant,
    from: Isolation,
    to: Isolation,
) -> Result<(), PlaceError> {
    name_tier(owner, tenant, from, to).await?;
    owner.batch_execute("COMMIT").await.map_err(failed)
}

/// Names tier `to` in the registry for `tenant` in `owner`'s transaction, if it is still
/// in tier `from`; refused if another changed its tier.
pub(super) async fn name_tier(
    owner: &Client,
    tenant: &Tenant,
    from: Isolation,
    to: Isolation,
) -> Result<(), PlaceError> {
    let switched = owner
        .execute(
            "UPDATE tenancy.tenants SET isolation = $2 \
             WHERE id = $1::text::uuid AND isolation = $3",
            &[&tenant.id.to_string(), &to.as_str(), &from.as_str()],
        )
        .await
        .map_err(failed)?;
    if switched != 1 {
        return Err(PlaceError::Conflict(format!(
            "tenant '{}' changed tier meanwhile",
            tenant.identifier
        )));
    }
    Ok(())
}

/// Leaves `tables` (qualified, quoted) refusing everyone, the owner too, with "tenant
/// moved to another tier" (`tenancy.moved_away()`, see the tier migration): what a
/// replica that has not heard of a switch sends there gets an error to retry.
pub(super) async fn refuse(owner: &Client, tables: &[String]) -> Result<(), PlaceError> {
    let refuse: Vec<String> = tables
        .iter()
        .map(|table| {
            format!(
                "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY; \
                 ALTER TABLE {table} FORCE ROW LEVEL SECURITY; \
                 CREATE POLICY tenancy_moved ON {table} \
                   USING (ctid = tenancy.moved_away()) WITH CHECK (ctid = tenancy.moved_away())"
            )
        })
        .collect();
    owner
        .batch_execute(&refuse.join("; "))
        .await
        .map_err(failed)
}

/// Sets the sequences of `table`'s serial and identity columns past the rows copied in.
async fn set_sequences(owner: &Client, table: &str) -> Result<(), PlaceError> {
    let serials = owner
        .query(
            "SELECT quote_ident(a.attname::text), pg_get_serial_sequence($1, a.attname::text) \
             FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 \
               AND NOT a.attisdropped AND pg_get_serial_sequence($1, a.attname::text) IS NOT NULL",
            &[&table],
        )
        .await
        .map_err(failed)?;
    for serial in serials {
        let (column, sequence): (String, String) = (serial.get(0), serial.get(1));
        owner
            .execute(
                &format!(
                    "SELECT setval($1::regclass, max({column})) FROM {table} \
                     HAVING max({column}) IS NOT NULL"
                ),
                &[&sequence],
            )
            .await
            .map_err(failed)?;
    }
    Ok(())
}

impl HybridStrategy {
    /// Refuses a change of tier this service does not make: one step up or down, `rls`
    /// and `schema` and `database`; `server` only with the `database` tier.
    pub fn check_tier_change(
        &self,
        tenant: &Tenant,
        to: Isolation,
        server: Option<&ServerAddress>,
    ) -> Result<(), PlaceError> {
        use Isolation::{Database, Rls, Schema};
        match (tenant.isolation, to, server) {
            (Rls, Schema, None) | (Schema, Rls, None) | (Database, Schema, None) => Ok(()),
            (Schema, Database, server) => server.map_or(Ok(()), |s| {
                self.database.servers.check(s).map_err(PlaceError::Invalid)
            }),
            (_, Schema | Rls, Some(_)) => Err(PlaceError::Invalid(
                "a server is chosen for tier database only".into(),
            )),
            (from, to, _) if from == to => Err(PlaceError::Conflict(format!(
                "tenant '{}' is in tier {to} already",
                tenant.identifier
            ))),
            (from, _, _) => Err(PlaceError::Conflict(format!(
                "tenant '{}' is in tier {from}: a tenant changes one tier at a time, between \
                 rls and schema, or schema and database",
                tenant.identifier
            ))),
        }
    }

    /// Makes `tenant`'s place in tier `to` ready (before the tenant is read-only:
    /// migrations take a while): its schema, or its database on `server`, with the
    /// tenant tables, empty; the shared tables are there already.
    pub async fn prepare_tier(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        to: Isolation,
        server: Option<&ServerAddress>,
    ) -> Result<TierTarget, PlaceError> {
        if to == Isolation::Database {
            let as_database = in_tier(tenant, Isolation::Database);
            let (name, server) = self
                .database
                .prepare_database_of(ctx, &as_database, server, &marker(tenant))
                .await?;
            return Ok(TierTarget::Database { name, server });
        }
        if to == Isolation::Rls {
            return Ok(TierTarget::Rls);
        }
        self.prepare_schema(ctx, tenant).await?;
        Ok(TierTarget::Schema)
    }

    /// Copies `tenant` to `target` and switches it there (see the module's
    /// documentation); `lock_within`: how long to wait for the writes under way.
    pub async fn switch_tier(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        target: &TierTarget,
        lock_within: Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        match target {
            TierTarget::Rls => self.switch_to_rls(ctx, tenant, lock_within).await,
            TierTarget::Schema if tenant.isolation == Isolation::Database => {
                self.switch_from_database(ctx, tenant, lock_within).await
            }
            TierTarget::Schema => self.switch_to_schema(ctx, tenant, lock_within).await,
            TierTarget::Database { name, server } => {
                self.switch_to_database(ctx, tenant, name, server.as_ref(), lock_within)
                    .await
            }
        }
    }

    /// Gives up a change of tier to `to` that did not switch: drops what
    /// [`Self::prepare_tier`] made, unless the tenant is in tier `to` after all (a commit
    /// whose answer was lost).
    pub async fn abandon_tier(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        to: Isolation,
    ) -> Result<(), PlaceError> {
        match to {
            Isolation::Database => {
                self.database
                    .abandon_database_of(ctx, tenant, &marker(tenant))
                    .await
            }
            Isolation::Schema => self.abandon_schema(ctx, tenant).await,
            Isolation::Rls => Ok(()),
        }
    }

    /// The owner's connection to the shared database in a transaction that holds
    /// `tenant`'s schema's tables (`ACCESS EXCLUSIVE`: its reads wait too, and no one
    /// holds them while they change), and those tables. `lock_within`: how long to wait
    /// for the transactions under way.
    pub(super) async fn lock_schema(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        lock_within: Duration,
    ) -> Result<(Client, Vec<Table>), PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let owner = self.owner(ctx).await?;
        let tables = tables_in_order(&owner, schema.as_str())
            .await
            .map_err(PlaceError::Copy)?;
        let locked: Vec<String> = tables.iter().map(|table| table.quoted.clone()).collect();
        begin_locked(&owner, &locked, "ACCESS EXCLUSIVE", lock_within).await?;
        Ok((owner, tables))
    }

    /// The owner's connection to the shared database.
    pub(super) async fn owner(&self, ctx: &Context) -> Result<Client, PlaceError> {
        crate::db::connect::bare(ctx.owner.clone(), &ctx.runtime)
            .await
            .map_err(|e| PlaceError::Copy(e.to_string()))
    }

    /// Creates `tenant`'s schema with its tables, empty. Refused: a schema of that name
    /// that holds rows.
    async fn prepare_schema(&self, ctx: &Context, tenant: &Tenant) -> Result<(), PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let owner = self.owner(ctx).await?;
        for table in tables_in_order(&owner, schema.as_str())
            .await
            .map_err(PlaceError::Copy)?
        {
            let rows: i64 = owner
                .query_one(&format!("SELECT count(*) FROM {}", table.quoted), &[])
                .await
                .map_err(failed)?
                .get(0);
            if rows > 0 {
                return Err(PlaceError::Conflict(format!(
                    "schema {} holds rows already (table {}): it is not this move's; drop it \
                     or empty it first",
                    schema.quoted(),
                    table.name
                )));
            }
        }
        let as_schema = in_tier(tenant, Isolation::Schema);
        self.schema.migrate(ctx, &as_schema).await?;
        Ok(())
    }

    /// Copies `tenant`'s rows from the shared tables into its schema, deletes them there
    /// and names tier `schema` in the registry, in one transaction that holds the shared
    /// tables against writes (every `rls` tenant's writes wait for it). `lock_within`:
    /// how long to wait for the writes under way.
    async fn switch_to_schema(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        lock_within: Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let owner = self.owner(ctx).await?;
        let tables = tables_in_order(&owner, schema.as_str())
            .await
            .map_err(PlaceError::Copy)?;
        let shared = |table: &Table| format!("\"{DATA_SCHEMA}\".{}", table.ident);
        let locked: Vec<String> = tables.iter().map(shared).collect();
        begin_locked(&owner, &locked, "EXCLUSIVE", lock_within).await?;
        let id = tenant.id.to_string();
        owner
            .execute("SELECT set_config($1, $2, true)", &[&TENANT_SETTING, &id])
            .await
            .map_err(failed)?;
        let mut copied = Vec::with_capacity(tables.len());
        for table in &tables {
            let columns = table.columns.join(", ");
            let rows = owner
                .execute(
                    &format!(
                        "INSERT INTO {} ({columns}) SELECT {columns} FROM {} \
                         WHERE tenant_id = $1::text::uuid",
                        table.quoted,
                        shared(table)
                    ),
                    &[&id],
                )
                .await
                .map_err(|e| PlaceError::Copy(format!("copying table {}: {e}", table.name)))?;
            set_sequences(&owner, &table.quoted).await?;
            copied.push(TableCopy {
                table: table.name.clone(),
                rows,
            });
        }
        // Deleted before the tenant leaves the tier: the policies let no one reach its
        // rows after that, the owner included.
        for table in tables.iter().rev() {
            owner
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE tenant_id = $1::text::uuid",
                        shared(table)
                    ),
                    &[&id],
                )
                .await
                .map_err(|e| {
                    PlaceError::Copy(format!("deleting from table {}: {e}", table.name))
                })?;
        }
        commit_tier(&owner, tenant, Isolation::Rls, Isolation::Schema).await?;
        Ok(copied)
    }

    /// Drops the schema [`Self::prepare_schema`] made (empty: the switch did not commit);
    /// refused if the tenant is in tier `schema` after all (a switch whose commit went
    /// unanswered: the move is finished by running it again, never undone). A schema of
    /// that name that holds rows was not made by the move: it stays.
    async fn abandon_schema(&self, ctx: &Context, tenant: &Tenant) -> Result<(), PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let owner = self.owner(ctx).await?;
        if !outside_schema_tier(&owner, tenant).await? {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is in tier schema already, or gone: nothing to give up",
                tenant.identifier
            )));
        }
        match drop_schema_left(&owner, &schema).await {
            Err(PlaceError::Conflict(_)) => Ok(()),
            other => other,
        }
    }

    /// Drops the schema `tenant` left (safe to repeat); refused while the registry names
    /// tier `schema`, and for a schema that holds rows no move left there.
    pub async fn drop_old_schema(&self, ctx: &Context, tenant: &Tenant) -> Result<(), PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let owner = self.owner(ctx).await?;
        if !outside_schema_tier(&owner, tenant).await? {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is in tier schema, or gone: its schema stays",
                tenant.identifier
            )));
        }
        drop_schema_left(&owner, &schema).await
    }
}

/// What marks the database a change of tier made (a resumed change drops only its own).
fn marker(tenant: &Tenant) -> String {
    format!("tenant {} changing tier to database", tenant.id)
}

/// Whether the registry names `tenant` in a tier other than `schema` (its schema, if
/// any, is then none of the tier's: one a move made or left).
async fn outside_schema_tier(owner: &Client, tenant: &Tenant) -> Result<bool, PlaceError> {
    let found = owner
        .execute(
            "SELECT 1 FROM tenancy.tenants WHERE id = $1::text::uuid AND isolation <> 'schema'",
            &[&tenant.id.to_string()],
        )
        .await
        .map_err(failed)?;
    Ok(found == 1)
}

/// What is left of `schema`: `None`, no such schema; `Some(true)`, one a move made or left
/// (its tables refuse everyone, or hold no row); `Some(false)`, one that holds rows no
/// move left there, which is not this service's to drop.
async fn schema_left(owner: &Client, schema: &SchemaName) -> Result<Option<bool>, PlaceError> {
    let found = owner
        .query(
            "SELECT EXISTS (SELECT 1 FROM pg_policy p \
               JOIN pg_class c ON c.oid = p.polrelid \
               WHERE c.relnamespace = n.oid AND p.polname = 'tenancy_moved') \
             FROM pg_namespace n WHERE n.nspname = $1",
            &[&schema.as_str()],
        )
        .await
        .map_err(failed)?;
    let Some(row) = found.first() else {
        return Ok(None);
    };
    if row.get::<_, bool>(0) {
        return Ok(Some(true));
    }
    for table in tables_in_order(owner, schema.as_str())
        .await
        .map_err(PlaceError::Copy)?
    {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.quoted);
        if owner
            .query_one(&sql, &[])
            .await
            .map_err(failed)?
            .get::<_, bool>(0)
        {
            return Ok(Some(false));
        }
    }
    Ok(Some(true))
}

/// Drops `schema` if a move made or left it (see [`schema_left`]); refuses one that
/// holds rows no move left there.
async fn drop_schema_left(owner: &Client, schema: &SchemaName) -> Result<(), PlaceError> {
    match schema_left(owner, schema).await? {
        None => Ok(()),
        Some(true) => owner
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", schema.quoted()))
            .await
            .map_err(failed),
        Some(false) => Err(PlaceError::Conflict(format!(
            "schema {} holds rows that no move left there: it stays; drop or rename it by \
             hand",
            schema.quoted()
        ))),
    }
}
