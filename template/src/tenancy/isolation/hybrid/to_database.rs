//! From tier `schema` to tier `database`: the tenant's schema is copied into a database
//! of its own (binary `COPY`, table by table), then left refusing the tenant, then
//! dropped once every replica has heard.

use std::time::Duration;

use tokio_postgres::Client;

use super::HybridStrategy;
use super::tiers::{commit_tier, failed, refuse};
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::isolation::database::copy::{TableCopy, copy_tables, tables_in_order};
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

    /// Whether the schema `tenant` left (for a database of its own, or for the shared
    /// tables) is still there.
    pub async fn has_old_schema(&self, ctx: &Context, tenant: &Tenant) -> Result<bool, PlaceError> {
        let owner = self.owner(ctx).await?;
        let schema = SchemaName::for_tenant(&tenant.identifier);
        Ok(schema_left(&owner, &schema).await?.is_some())
    }

    /// Drops the schema `tenant` left (safe to repeat); refused while the registry names
    /// tier `schema`, and for a schema that holds rows no move left there.
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
        drop_schema_left(&owner, &schema).await
    }
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
pub(super) async fn drop_schema_left(
    owner: &Client,
    schema: &SchemaName,
) -> Result<(), PlaceError> {
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
