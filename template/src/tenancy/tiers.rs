//! Changing a hybrid tenant's tier (`tenant move <identifier> --isolation schema`, the
//! admin API's `{"isolation": "schema"}`): a tenant that outgrows the shared tables gets
//! a schema of its own, without downtime.
//!
//! The tenant is read-only (maintenance `moving`) while one transaction copies its rows
//! into its schema, deletes them from the shared tables and names its new tier in the
//! registry; then it takes writes in its schema. Interrupted before that commit, the
//! move changed nothing but the empty schema it prepared (given up, or reused when run
//! again); after it, running it again ends the read-only state.

use std::time::Instant;

use super::Tenancy;
use super::audit::{Actor, Operation};
use super::lifecycle::LifecycleError;
use super::moves::{LOCK_WITHIN, Moved};
use crate::domain::{Isolation, Maintenance, Tenant, TenantIdentifier};

impl Tenancy {
    /// Moves `identifier`'s data to tier `to` (from `rls` to `schema`), or finishes its
    /// interrupted move there; `progress` hears of each step.
    pub async fn change_tier(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
        to: Isolation,
        progress: impl FnMut(String),
    ) -> Result<Moved, LifecycleError> {
        let params = serde_json::json!({ "isolation": to.as_str() });
        let run = self.retier(identifier, to, progress);
        self.audited(actor, Operation::Move, identifier, params, run)
            .await
    }

    async fn retier(
        &self,
        identifier: &TenantIdentifier,
        to: Isolation,
        mut progress: impl FnMut(String),
    ) -> Result<Moved, LifecycleError> {
        let (ctx, hybrid) = (self.context(), self.strategy());
        // Held until the move returns.
        let (tenant, _one_move) = self.movable(identifier).await?;
        if tenant.isolation == to && tenant.maintenance == Maintenance::Moving {
            progress(format!(
                "resuming: in tier {to} already; ends its read-only state"
            ));
            self.end_moving(&tenant).await?;
            return Ok(Moved::new(&tenant, None, None, Vec::new(), 0));
        }
        hybrid.check_tier_change(&tenant, to)?;
        progress(format!("preparing its tier {to}"));
        if let Err(error) = hybrid.prepare_tier(ctx, &tenant).await {
            return Err(self.give_up_tier(&tenant, false, error.into()).await);
        }
        let started = Instant::now();
        let ours = match self.mark_moving(&tenant).await {
            Ok(ours) => ours,
            Err(error) => return Err(self.give_up_tier(&tenant, false, error).await),
        };
        progress(format!(
            "read-only: moving its rows from tier {} to {to}",
            tenant.isolation
        ));
        let tables = match hybrid.switch_tier(ctx, &tenant, LOCK_WITHIN).await {
            Ok(tables) => tables,
            Err(error) => return Err(self.give_up_tier(&tenant, ours, error.into()).await),
        };
        for copied in &tables {
            progress(format!("copied {}: {} rows", copied.table, copied.rows));
        }
        progress(format!("switched: served from tier {to}"));
        if ours {
            self.end_moving(&tenant).await?;
        }
        let read_only = started.elapsed();
        progress(format!(
            "takes writes again, read-only for {:.2} s",
            read_only.as_secs_f64()
        ));
        let read_only_ms = u64::try_from(read_only.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(tenant.id = %tenant.id, tenant.identifier = %identifier, from = %tenant.isolation, to = %to, read_only_ms, "tenant changed tier");
        let now = Tenant {
            isolation: to,
            ..tenant
        };
        Ok(Moved::new(&now, None, None, tables, read_only_ms))
    }

    /// Gives up a change of tier that failed before its switch (`error`): the tenant
    /// takes writes where it is again (if the move made it read-only: `ours`).
    async fn give_up_tier(
        &self,
        tenant: &Tenant,
        ours: bool,
        error: LifecycleError,
    ) -> LifecycleError {
        let given_up = self
            .strategy()
            .abandon_tier(self.context(), tenant)
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
