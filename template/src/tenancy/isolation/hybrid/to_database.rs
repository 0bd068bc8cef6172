//! From tier `schema` to tier `database`: the tenant's schema is copied into a database
//! of its own (binary `COPY`, table by table), then left refusing the tenant, then
//! dropped once every replica has heard.

use std::time::Duration;

use super::HybridStrategy;
use super::tiers::{commit_tier, failed, refuse};
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::isolation::database::copy::{
    TableCopy, begin_locked, copy_tables, tables_in_order,
};
use crate::tenancy::isolation::schema::SchemaName;
use crate::tenancy::isolation::{Context, PlaceError, ServerAddress};

impl HybridStrategy {
    /// Copies `tenant`'s schema into its database `name` on `server` (made by
    /// `prepare_tier`) and names tier `database` in the registry. The schema's tables are
    /// locked for the whole copy (`ACCESS EXCLUSIVE`: the tenant's reads wait too, which
    /// keeps anyone from holding them while they change); before they are let go, each
    /// gets a policy that refuses everyone ("tenant moved to another tier", see the
    /// tier migration), so a replica that has not heard gets an error to retry.
    pub(super) async fn switch_to_database(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        name: &SqlIdentifier,
        server: Option<&ServerAddress>,
        lock_within: Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let source = self.owner(ctx).await?;
        let tables: Vec<String> = tables_in_order(&source, schema.as_str())
            .await
            .map_err(PlaceError::Copy)?
            .into_iter()
            .map(|table| table.quoted)
            .collect();
        begin_locked(&source, &tables, "ACCESS EXCLUSIVE", lock_within).await?;
        let target = self.database.owner_inside(ctx, name, server).await?;
        target.batch_execute("BEGIN").await.map_err(failed)?;
        let copied = copy_tables(&source, schema.as_str(), &target, "public")
            .await
            .map_err(PlaceError::Copy)?;
        target.batch_execute("COMMIT").await.map_err(failed)?;
        refuse(&source, &tables).await?;
        commit_tier(&source, tenant, Isolation::Schema, Isolation::Database).await?;
        Ok(copied)
    }

    /// Whether the schema `tenant` left (for a database of its own, or for the shared
    /// tables) is still there.
    pub async fn has_old_schema(&self, ctx: &Context, tenant: &Tenant) -> Result<bool, PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let owner = self.owner(ctx).await?;
        let found = owner
            .query(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                &[&schema.as_str()],
            )
            .await
            .map_err(failed)?;
        Ok(!found.is_empty())
    }

    /// Drops the schema `tenant` left (safe to repeat); refused while the registry names
    /// tier `schema`.
    pub async fn drop_old_schema(&self, ctx: &Context, tenant: &Tenant) -> Result<(), PlaceError> {
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let owner = self.owner(ctx).await?;
        let moved = owner
            .query(
                "SELECT 1 FROM tenancy.tenants WHERE id = $1::text::uuid AND isolation <> 'schema'",
                &[&tenant.id.to_string()],
            )
            .await
            .map_err(failed)?;
        if moved.is_empty() {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is in tier schema, or gone: its schema stays",
                tenant.identifier
            )));
        }
        owner
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                schema.quoted()
            ))
            .await
            .map_err(failed)
    }
}
