//! Changing a hybrid tenant's tier (`tenant move <identifier> --isolation <tier>`, the
//! admin API's `{"isolation": ...}`): a tenant that outgrows the shared tables gets a
//! schema of its own, and one that outgrows that a database of its own, without
//! downtime; and back down. One tier at a time.
//!
//! The tenant is read-only (maintenance `moving`) while its data is copied to the new
//! place, its new tier named in the registry and the old place left refusing it; then
//! it takes writes in the new place, and the old one is dropped once every replica has
//! heard. Interrupted before the registry names the new tier, the move changed nothing
//! but the empty place it prepared (given up, or made anew when run again); after it,
//! running it again finishes it.

use std::time::{Duration, Instant};

use super::Tenancy;
use super::audit::{Actor, Operation};
use super::isolation::ServerAddress;
use super::lifecycle::LifecycleError;
use super::moves::{LOCK_WITHIN, Moved, deleted};
use crate::domain::{Isolation, Maintenance, Tenant, TenantIdentifier, TenantStatus};

/// How long a schema left for a database stays (refusing the tenant) before it is
/// dropped: replicas hear of a change within a second.
const REPLICAS_HEAR_WITHIN: Duration = Duration::from_secs(2);

impl Tenancy {
    /// Moves `identifier`'s data one tier up or down, to `to` (`server`: where its
    /// database goes, for tier `database`), or finishes its interrupted move there;
    /// `progress` hears of each step.
    pub async fn change_tier(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
        to: Isolation,
        server: Option<ServerAddress>,
        progress: impl FnMut(String),
    ) -> Result<Moved, LifecycleError> {
        let params = serde_json::json!({
            "isolation": to.as_str(),
            "server": server.as_ref().map(ServerAddress::as_str),
        });
        let run = self.retier(identifier, to, server.as_ref(), progress);
        self.audited(actor, Operation::Move, identifier, params, run)
            .await
    }

    async fn retier(
        &self,
        identifier: &TenantIdentifier,
        to: Isolation,
        server: Option<&ServerAddress>,
        mut progress: impl FnMut(String),
    ) -> Result<Moved, LifecycleError> {
        let (ctx, hybrid) = (self.context(), self.strategy());
        // Held until the move returns.
        let (tenant, _one_move) = self.movable(identifier).await?;
        if tenant.isolation == to && self.unfinished(&tenant).await? {
            progress(format!("resuming: in tier {to} already"));
            return self.finish_tier(&tenant, Vec::new(), 0, progress).await;
        }
        if tenant.status == TenantStatus::Deleted {
            return Err(deleted(identifier));
        }
        hybrid.check_tier_change(&tenant, to, server)?;
        progress(format!("preparing its place in tier {to}"));
        let target = match hybrid.prepare_tier(ctx, &tenant, to, server).await {
            Ok(target) => target,
            Err(error) => return Err(self.give_up_tier(&tenant, to, false, error.into()).await),
        };
        let (started, from) = (Instant::now(), tenant.isolation);
        let ours = match self.mark_moving(&tenant).await {
            Ok(ours) => ours,
            Err(error) => return Err(self.give_up_tier(&tenant, to, false, error).await),
        };
        progress(format!(
            "read-only: moving its data from tier {} to {to}",
            tenant.isolation
        ));
        let tables = match hybrid.switch_tier(ctx, &tenant, &target, LOCK_WITHIN).await {
            Ok(tables) => tables,
            Err(error) => return Err(self.give_up_tier(&tenant, to, ours, error.into()).await),
        };
        for copied in &tables {
            progress(format!("copied {}: {} rows", copied.table, copied.rows));
        }
        progress(format!("switched: served from tier {to}"));
        let now = super::isolation::in_tier(&tenant, to);
        self.close_connections_of(&now);
        if ours {
            self.end_moving(&now).await?;
        }
        let read_only = started.elapsed();
        progress(format!(
            "takes writes again, read-only for {:.2} s",
            read_only.as_secs_f64()
        ));
        let read_only_ms = u64::try_from(read_only.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(tenant.id = %now.id, tenant.identifier = %identifier, from = %from, to = %to, read_only_ms, "tenant changed tier");
        // The old place is dropped, unless it is the shared tables.
        if from != Isolation::Rls {
            tokio::time::sleep(REPLICAS_HEAR_WITHIN).await;
        }
        self.finish_tier(&now, tables, read_only_ms, progress).await
    }

    /// Whether `tenant`'s switch happened and its move is not finished: still read-only,
    /// or the place it left still there (a schema, or in tier `schema` a database).
    async fn unfinished(&self, tenant: &Tenant) -> Result<bool, LifecycleError> {
        if tenant.maintenance == Maintenance::Moving {
            return Ok(true);
        }
        let mut conn = self.control.get().await?;
        let left = self
            .strategy()
            .left_by_tier_change(&mut conn, tenant)
            .await?;
        conn.finish(true).await?;
        Ok(left.is_some())
    }

    /// Whether the schema `tenant` left is still there.
    async fn has_old_schema(&self, tenant: &Tenant) -> Result<bool, LifecycleError> {
        let mut conn = self.control.get().await?;
        let schema = self.strategy().old_schema(&mut conn, tenant).await?;
        conn.finish(true).await?;
        Ok(schema.is_some())
    }

    /// Ends a switched move: a database the tenant left is closed, the tenant takes writes
    /// (if the move left it read-only), and the place it left is dropped.
    async fn finish_tier(
        &self,
        tenant: &Tenant,
        tables: Vec<super::isolation::TableCopy>,
        read_only_ms: u64,
        mut progress: impl FnMut(String),
    ) -> Result<Moved, LifecycleError> {
        let (ctx, hybrid) = (self.context(), self.strategy());
        let now = self.get_tenant(&tenant.identifier).await?;
        let not_yet = |error: super::isolation::PlaceError| {
            LifecycleError::Conflict(format!(
                "tenant '{}' is served from tier {}, but the place it left is not dropped \
                 yet ({error}): run the same move again to finish it",
                tenant.identifier, now.isolation
            ))
        };
        if now.maintenance == Maintenance::Moving {
            if now.isolation == Isolation::Schema {
                let closed = hybrid.databases().close_database_left(ctx, &now).await;
                closed.map_err(not_yet)?;
            }
            self.end_moving(&now).await?;
        }
        if now.isolation == Isolation::Schema {
            let dropped = hybrid.databases().drop_database_left(ctx, &now).await;
            if let Some(database) = dropped.map_err(not_yet)? {
                progress(format!("dropped its old database {database}"));
            }
        } else if self.has_old_schema(&now).await? {
            hybrid.drop_old_schema(ctx, &now).await.map_err(not_yet)?;
            progress("dropped its old schema".into());
        }
        let placed = self.databases().placement_of(self.context(), &now).await?;
        Ok(Moved::new(&now, None, placed, tables, read_only_ms))
    }

    /// Gives up a change of tier to `to` that failed before its switch (`error`): the
    /// tenant takes writes where it is again (if the move made it read-only: `ours`).
    async fn give_up_tier(
        &self,
        tenant: &Tenant,
        to: Isolation,
        ours: bool,
        error: LifecycleError,
    ) -> LifecycleError {
        let given_up = self
            .strategy()
            .abandon_tier(self.context(), tenant, to)
            .await
            .map_err(LifecycleError::from);
        let ended = match (&given_up, ours) {
            (Ok(()), true) => self.end_moving(tenant).await,
            _ => Ok(()),
        };
        match given_up.and(ended) {
            Ok(()) => error,
            Err(also) => LifecycleError::Conflict(format!(
                "the move failed ({error}) and could not be given up ({also}): run the same \
                 move again, or `tenant maintenance {} off`",
                tenant.identifier
            )),
        }
    }
}
