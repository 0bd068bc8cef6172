//! From tier `schema` to tier `database`: the tenant's schema is copied into a database
//! of its own (binary `COPY`, table by table), then left refusing the tenant, then
//! dropped once every replica has heard.

use std::time::Duration;

use super::HybridStrategy;
use super::tiers::{commit_tier, failed, refuse};
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::isolation::copy::{TableCopy, copy_tables};
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
        let (source, tables) = self.lock_schema(ctx, tenant, lock_within).await?;
        let tables: Vec<String> = tables.into_iter().map(|table| table.quoted).collect();
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
}
