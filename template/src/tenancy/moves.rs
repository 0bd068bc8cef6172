//! Moving a tenant's data (its schema, or its database) to another PostgreSQL server
//! (`tenant move`, the admin API's `POST /admin/tenants/{identifier}/move`).
//!
//! The tenant is read-only (maintenance `moving`) from the start of the move to its end;
//! its data is copied to the target while its tables are locked against writes, the
//! registry then names the target in one transaction, and the old copy is dropped. The
//! strategy does each step ([`Relocate`]).
//! A move interrupted at any step is resumed by running it again (`tenancy.tenant_moves`
//! says where it stopped); one that fails before the switch is given up, and the tenant
//! takes writes where it was.

use std::time::{Duration, Instant};

use diesel::sql_types::{Bool, Text};
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::audit::{Actor, Operation};
use super::isolation::{Move, PlaceError, Relocate, ServerAddress, TableCopy, server_name};
use super::lifecycle::{LifecycleError, OfTenant};
use super::{Tenancy, registry};
use crate::db::connect::PgConn;
use crate::domain::{Isolation, Maintenance, Tenant, TenantIdentifier, TenantStatus};

/// How long a move waits for the writes under way on the tenant's tables to finish.
pub(super) const LOCK_WITHIN: Duration = Duration::from_secs(30);

/// How long a move waits for another move of the same tenant to end before it is refused.
const OTHER_MOVE_WITHIN: Duration = Duration::from_secs(5);

/// What a move did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Moved {
    #[serde(skip)]
    tenant_id: uuid::Uuid,
    pub identifier: TenantIdentifier,
    /// The server it left (`null`: the default server).
    #[schema(value_type = Option<String>)]
    pub from: Option<ServerAddress>,
    /// The server it is on now (`null`: the default server).
    #[schema(value_type = Option<String>)]
    pub to: Option<ServerAddress>,
    /// How the tenant is isolated now (in hybrid: its tier).
    pub isolation: Isolation,
    /// Each table copied, with its rows (none when a switched move was resumed).
    #[schema(value_type = Vec<Object>)]
    pub tables: Vec<TableCopy>,
    /// How long the tenant refused writes, in milliseconds.
    pub read_only_ms: u64,
}

impl Moved {
    pub(super) fn new(
        tenant: &Tenant,
        from: Option<ServerAddress>,
        to: Option<ServerAddress>,
        tables: Vec<TableCopy>,
        read_only_ms: u64,
    ) -> Self {
        Self {
            tenant_id: tenant.id,
            identifier: tenant.identifier.clone(),
            from,
            to,
            isolation: tenant.isolation,
            tables,
            read_only_ms,
        }
    }
}

impl OfTenant for Moved {
    fn tenant_id(&self) -> uuid::Uuid {
        self.tenant_id
    }
}

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

impl Tenancy {
    /// Moves `identifier`'s data to `to` (`None`: the default server), or resumes its
    /// interrupted move there; `progress` hears of each step.
    pub async fn move_tenant(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
        to: Option<ServerAddress>,
        progress: impl FnMut(String),
    ) -> Result<Moved, LifecycleError> {
        let params = serde_json::json!({ "to": to.as_ref().map(ServerAddress::as_str) });
        let run = self.relocate(identifier, to.as_ref(), progress);
        self.audited(actor, Operation::Move, identifier, params, run)
            .await
    }

    async fn relocate(
        &self,
        identifier: &TenantIdentifier,
        to: Option<&ServerAddress>,
        mut progress: impl FnMut(String),
    ) -> Result<Moved, LifecycleError> {
        let ctx = self.context();
        // Held until the move returns.
        let (tenant, _one_move) = self.movable(identifier).await?;
        let strategy = self.relocator();
        if tenant.status == TenantStatus::Deleted {
            self.finishing_only(&tenant).await?;
        }
        let moving = strategy.start_move(ctx, &tenant, to).await?;
        let storage = strategy.storage();
        let (from_name, to_name) = (
            server_name(moving.from.as_ref()),
            server_name(moving.to.as_ref()),
        );
        if !moving.switched {
            progress(format!("preparing its copy on {to_name}"));
            if let Err(error) = strategy.prepare_copy(ctx, &tenant, &moving).await {
                return Err(self.give_up(&tenant, &moving, false, error.into()).await);
            }
        }
        let started = Instant::now();
        // Read-only until the switch; a switched move needs none (but ends what the
        // interrupted attempt left).
        let ours = if moving.switched {
            tenant.maintenance == Maintenance::Moving
        } else {
            match self.mark_moving(&tenant).await {
                Ok(ours) => ours,
                Err(error) => return Err(self.give_up(&tenant, &moving, false, error).await),
            }
        };
        let mut tables = Vec::new();
        if moving.switched {
            progress(format!(
                "resuming: served from {to_name} already; the old {storage} on {from_name} is \
                 left to drop"
            ));
        } else {
            progress(format!(
                "read-only: copying its {storage} from {from_name} to {to_name}"
            ));
            match strategy
                .copy_and_switch(ctx, &tenant, &moving, LOCK_WITHIN)
                .await
            {
                Ok(copied) => tables = copied,
                Err(error) => {
                    return Err(self.give_up(&tenant, &moving, ours, error.into()).await);
                }
            }
            for copied in &tables {
                progress(format!("copied {}: {} rows", copied.table, copied.rows));
            }
            progress(format!("switched: served from {to_name}"));
        }
        if let Err(error) = strategy.close_old(ctx, &tenant, &moving).await {
            return Err(self.not_finished(&tenant, &moving, error));
        }
        self.close_connections_of(&tenant);
        if ours {
            self.end_moving(&tenant).await?;
        }
        let read_only = started.elapsed();
        progress(format!(
            "takes writes again, read-only for {:.2} s",
            read_only.as_secs_f64()
        ));
        if let Err(error) = strategy.finish_move(ctx, &tenant, &moving).await {
            return Err(self.not_finished(&tenant, &moving, error));
        }
        progress(format!("dropped the old {storage} on {from_name}"));
        tracing::info!(tenant.id = %tenant.id, tenant.identifier = %identifier, from = from_name, to = to_name, read_only_ms = read_only.as_millis() as u64, "tenant moved");
        Ok(Moved::new(
            &tenant,
            moving.from,
            moving.to,
            tables,
            u64::try_from(read_only.as_millis()).unwrap_or(u64::MAX),
        ))
    }

    /// A deleted tenant moves only to finish a move of it stopped partway: refused when
    /// none is recorded.
    async fn finishing_only(&self, tenant: &Tenant) -> Result<(), LifecycleError> {
        let mut conn = self.control.get().await?;
        let recorded = self.relocator().unfinished_move(&mut conn, tenant).await?;
        conn.finish(true).await?;
        match recorded {
            Some(_) => Ok(()),
            None => Err(deleted(&tenant.identifier)),
        }
    }

    /// The tenant `identifier` names, if it may move, and the session that holds its
    /// move's lock (one move of a tenant at a time) until it is dropped.
    pub(super) async fn movable(
        &self,
        identifier: &TenantIdentifier,
    ) -> Result<(Tenant, PgConn), LifecycleError> {
        let ctx = self.context();
        if !ctx.has_owner {
            return Err(LifecycleError::Conflict(
                "moving a tenant takes the owner's rights, which this process does not \
                 hold (TENANCY_MIGRATION_DATABASE_URL): use `tenant move`"
                    .into(),
            ));
        }
        self.check_owner_session().await?;
        let tenant = self.get_tenant(identifier).await?;
        // A move under way or stopped partway is finished even for a tenant deleted
        // meanwhile: it can be destroyed only then.
        if tenant.status == TenantStatus::Deleted && self.unfinished_move(&tenant).await?.is_none()
        {
            return Err(deleted(identifier));
        }
        let mut guard = ctx.connect(ctx.owner.clone()).await?;
        // A process killed during a move holds the lock until its server notices the
        // session is gone: a moment, so a move run again right away waits for that.
        let started = Instant::now();
        loop {
            let Locked { locked } = diesel::sql_query(
                "SELECT pg_try_advisory_lock(hashtext('tenancy.move'), hashtext($1)) AS locked",
            )
            .bind::<Text, _>(tenant.id.to_string())
            .get_result(&mut guard)
            .await?;
            if locked {
                return Ok((tenant, guard));
            }
            if started.elapsed() >= OTHER_MOVE_WITHIN {
                return Err(LifecycleError::Conflict(format!(
                    "tenant '{identifier}' is being moved by another process"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Gives up a move that failed before its switch (`error`): the tenant takes writes
    /// where it is again (if the move made it read-only: `ours`). If that fails too, the
    /// tenant stays read-only and running the move again resumes it.
    async fn give_up(
        &self,
        tenant: &Tenant,
        moving: &Move,
        ours: bool,
        error: LifecycleError,
    ) -> LifecycleError {
        let given_up = self
            .relocator()
            .abandon_move(self.context(), tenant, moving)
            .await;
        let ended = match (&given_up, ours) {
            (Ok(()), true) => self.end_moving(tenant).await,
            _ => Ok(()),
        };
        match (given_up, ended) {
            (Ok(()), Ok(())) => error,
            (Err(also), _) => LifecycleError::Conflict(format!(
                "the move failed ({error}) and could not be given up ({also}): the tenant \
                 stays read-only; run the same move again to resume it"
            )),
            (Ok(()), Err(also)) => LifecycleError::Conflict(format!(
                "the move failed ({error}); it was given up, but the tenant is still \
                 read-only ({also}): `tenant maintenance {} off`",
                tenant.identifier
            )),
        }
    }

    /// A switched move whose old copy could not be closed or dropped (`error`).
    fn not_finished(&self, tenant: &Tenant, moving: &Move, error: PlaceError) -> LifecycleError {
        LifecycleError::Conflict(format!(
            "tenant '{}' is served from {}, but its old {} on {} is not dropped yet \
             ({error}): run the same move again to finish it",
            tenant.identifier,
            server_name(moving.to.as_ref()),
            self.relocator().storage(),
            server_name(moving.from.as_ref())
        ))
    }

    /// Makes `tenant` read-only for its move; whether the move is to end that too (not
    /// when an operator's `read_only` was on first).
    pub(super) async fn mark_moving(&self, tenant: &Tenant) -> Result<bool, LifecycleError> {
        self.switch_maintenance(tenant, Maintenance::Off, Maintenance::Moving)
            .await?;
        let now = {
            let mut conn = self.control.get().await?;
            let now = registry::find_by_identifier(&mut conn, &tenant.identifier).await?;
            conn.finish(true).await?;
            now
        };
        match now.map(|t| t.maintenance) {
            Some(Maintenance::Moving) => Ok(true),
            Some(Maintenance::ReadOnly) => Ok(false),
            Some(Maintenance::Migrating) => Err(LifecycleError::Conflict(format!(
                "tenant '{}' is being migrated: move it when `migrate` is done",
                tenant.identifier
            ))),
            Some(Maintenance::Off) | None => {
                Err(LifecycleError::NotFound(tenant.identifier.to_string()))
            }
        }
    }

    /// Ends `moving` on `tenant`.
    pub(super) async fn end_moving(&self, tenant: &Tenant) -> Result<(), LifecycleError> {
        self.switch_maintenance(tenant, Maintenance::Moving, Maintenance::Off)
            .await
            .map(drop)
    }
}

/// Refuses to move deleted tenant `identifier`: only a move of it stopped partway is
/// finished, so that it can be destroyed.
pub(super) fn deleted(identifier: &TenantIdentifier) -> LifecycleError {
    LifecycleError::Conflict(format!(
        "tenant '{identifier}' is deleted: only a move of it stopped partway is finished \
         (destroy it, or it stays where it is)"
    ))
}
