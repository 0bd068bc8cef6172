//! Down a tier: from `database` to `schema` (the tenant's database is copied into a
//! schema of its own, then closed to every session, then dropped once every replica has
//! heard), and from `schema` to `rls` (its schema's rows go into the shared tables, the
//! schema is left refusing it, then dropped).

use std::time::Duration;

use super::HybridStrategy;
use super::tiers::{commit_tier, failed, name_tier, refuse};
use crate::db::pool::TENANT_SETTING;
use crate::domain::{Isolation, Tenant};
use crate::tenancy::isolation::copy::{TableCopy, begin_locked, copy_tables, tables_in_order};
use crate::tenancy::isolation::rls::DATA_SCHEMA;
use crate::tenancy::isolation::schema::SchemaName;
use crate::tenancy::isolation::{Context, PlaceError};

impl HybridStrategy {
    /// Copies `tenant`'s schema into the shared tables and names tier `rls`, in one
    /// transaction that holds the schema's tables (`ACCESS EXCLUSIVE`: the tenant's reads
    /// wait too) and leaves them refusing everyone. The shared tables' other tenants go
    /// on: the rows written there are the tenant's, whom no one reaches before the commit.
    pub(super) async fn switch_to_rls(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        lock_within: Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        let (owner, tables) = self.lock_schema(ctx, tenant, lock_within).await?;
        // In tier rls from here on in this transaction: the shared tables' policies take
        // the tenant's rows (a role subject to them, as the owner may be, sees its own).
        name_tier(&owner, tenant, Isolation::Schema, Isolation::Rls).await?;
        let id = tenant.id.to_string();
        owner
            .execute("SELECT set_config($1, $2, true)", &[&TENANT_SETTING, &id])
            .await
            .map_err(failed)?;
        let mut copied = Vec::with_capacity(tables.len());
        for table in &tables {
            let shared = format!("\"{DATA_SCHEMA}\".{}", table.ident);
            let there: i64 = owner
                .query_one(
                    &format!("SELECT count(*) FROM {shared} WHERE tenant_id = $1::text::uuid"),
                    &[&id],
                )
                .await
                .map_err(|e| PlaceError::Copy(format!("reading table {shared}: {e}")))?
                .get(0);
            if there > 0 {
                return Err(PlaceError::Conflict(format!(
                    "the shared table {} holds {there} rows of tenant '{}' already: they \
                     are not this move's; delete them first",
                    table.name, tenant.identifier
                )));
            }
            let columns = table.columns.join(", ");
            let rows = owner
                .execute(
                    &format!(
                        "INSERT INTO {shared} (tenant_id, {columns}) \
                         SELECT $1::text::uuid, {columns} FROM {}",
                        table.quoted
                    ),
                    &[&id],
                )
                .await
                .map_err(|e| PlaceError::Copy(format!("copying table {}: {e}", table.name)))?;
            copied.push(TableCopy {
                table: table.name.clone(),
                rows,
            });
        }
        let locked: Vec<String> = tables.iter().map(|table| table.quoted.clone()).collect();
        refuse(&owner, &locked).await?;
        owner.batch_execute("COMMIT").await.map_err(failed)?;
        Ok(copied)
    }

    /// Copies `tenant`'s database into its schema (made by `prepare_tier`) and names tier
    /// `schema`. The database's tables are held against writes for the whole copy
    /// (`EXCLUSIVE`: reads go on); after the switch, and before they are let go, the
    /// database is closed to every session (see `close_database_left`).
    pub(super) async fn switch_from_database(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        lock_within: Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let (name, server) = self.database.database_of(ctx, tenant).await?;
        let source = self
            .database
            .owner_inside(ctx, &name, server.as_ref())
            .await?;
        let tables: Vec<String> = tables_in_order(&source, "public")
            .await
            .map_err(PlaceError::Copy)?
            .into_iter()
            .map(|table| table.quoted)
            .collect();
        begin_locked(&source, &tables, "EXCLUSIVE", lock_within).await?;
        let target = self.owner(ctx).await?;
        target.batch_execute("BEGIN").await.map_err(failed)?;
        let copied = copy_tables(&source, "public", &target, &schema.quoted())
            .await
            .map_err(PlaceError::Copy)?;
        commit_tier(&target, tenant, Isolation::Database, Isolation::Schema).await?;
        let now = super::in_tier(tenant, Isolation::Schema);
        // Ends `source`'s session too, and with it the lock.
        if let Err(error) = self.database.close_database_left(ctx, &now).await {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is served from tier schema, but its old database is not closed \
                 yet ({error}): run the same move again to finish it",
                tenant.identifier
            )));
        }
        Ok(copied)
    }
}
