//! Tenant lifecycle: create (provision), suspend, activate, delete, destroy, and migrating
//! every tenant. The CLI and the admin API both call these, so they behave the same, and
//! each call is recorded in the audit trail (`audit`) with its actor, however it ends.
//!
//! provisioning -> active <-> suspended; active|suspended|provisioning -> deleted;
//! deleted -> (destroyed: storage dropped, row removed).

use std::time::Instant;

use diesel::sql_types::{Bool, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::StreamExt;
use serde::Serialize;

use super::audit::{self, Actor, Operation, Outcome, Record};
{%- if isolation != "hybrid" %}
use super::isolation::Relocate;
{%- endif %}
use super::isolation::{DestroyPlan, Pending, Strategy};
use super::{Tenancy, registry};
use crate::db::CONTROL_SCHEMA;
use crate::db::connect::ConnectError;
use crate::db::connect::with_session_option;
use crate::db::migrate::{self, CONTROL_MIGRATIONS, MigrateError};
use crate::db::pool::PoolError;
{%- if tenant_databases %}
use crate::domain::Isolation;
{%- endif %}
use crate::domain::{
    Maintenance, Tenant, TenantIdentifier, TenantLimits, TenantStatus, check_json, check_visible,
};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no tenant '{0}'")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("tenant '{0}' has no job {1}")]
    NoJob(TenantIdentifier, i64),
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("provisioning failed: {0}")]
    Migration(#[from] MigrateError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Copying a tenant's data to another server failed (`tenant move`).
    #[error("the move failed: {0}")]
    Move(String),
    /// A move waited in vain for the tenant's tables: given up, nothing changed.
    #[error("{0}")]
    Busy(String),
}

impl LifecycleError {
    /// How the audit trail and `/metrics` count an operation that ended with this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::NotFound(_) | Self::Conflict(_) | Self::Invalid(_) | Self::NoJob(..) => {
                Outcome::Refused
            }
            _ => Outcome::Failed,
        }
    }
}

impl From<super::isolation::PlaceError> for LifecycleError {
    fn from(error: super::isolation::PlaceError) -> Self {
        use super::isolation::PlaceError;
        match error {
            PlaceError::Conflict(m) => Self::Conflict(m),
            PlaceError::Invalid(m) => Self::Invalid(m),
            PlaceError::Migrate(e) => Self::Migration(e),
            PlaceError::Database(e) => Self::Database(e),
            PlaceError::Copy(m) => Self::Move(m),
            PlaceError::Busy(m) => Self::Busy(m),
        }
    }
}

/// A tenant to create. Members it does not know are refused, so that a request meant for
/// another kind of service is not half-understood.
#[derive(Debug, Clone, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub identifier: TenantIdentifier,
    /// 1 to 200 characters, not all white space; stored trimmed.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\u0000\u0009-\u000d \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub name: String,
{%- if isolation == "hybrid" %}
    /// The tier: `schema`, `rls` or `database`; default: `TENANCY_DEFAULT_ISOLATION`.
    #[serde(default)]
    #[schema(schema_with = super::isolation::tier_schema)]
    pub isolation: Option<crate::domain::Isolation>,
{%- endif %}
    /// A JSON object (default `{}`), kept as sent; no NUL character (U+0000) in its
    /// strings and keys. The audit trail records its keys only.
    #[serde(default = "empty_object")]
    #[schema(schema_with = crate::domain::StorableJson::object)]
    pub metadata: serde_json::Value,
    /// The PostgreSQL server (`host[:port]`, one of `TENANCY_DATABASE_SERVERS`) of the
    /// tenant's {% if isolation == "schema" %}schema{% elsif isolation == "rls" %}rows{% else %}database{% endif %}; default: as `TENANCY_DATABASE_PLACEMENT` says.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?$", max_length = 253)]
    pub server: Option<super::isolation::ServerAddress>,
}

impl NewTenant {
    /// A tenant with the service's default isolation and no metadata.
    pub fn new(identifier: TenantIdentifier, name: impl Into<String>) -> Self {
        Self {
            identifier,
            name: name.into(),
{%- if isolation == "hybrid" %}
            isolation: None,
{%- endif %}
            metadata: empty_object(),
            server: None,
        }
    }

    /// What the audit trail records of a creation: everything but the metadata's values.
    fn audit_params(&self) -> serde_json::Value {
        let mut params = serde_json::to_value(self).unwrap_or_else(|_| empty_object());
        if let Some(params) = params.as_object_mut() {
            params.remove("metadata");
            if let Some(metadata) = self.metadata.as_object() {
                let keys: Vec<&String> = metadata.keys().collect();
                params.insert("metadata_keys".into(), serde_json::json!(keys));
            }
        }
        params
    }
}

/// What an audited operation returns: something of one tenant, whose id the audit trail
/// records.
pub(crate) trait OfTenant {
    fn tenant_id(&self) -> uuid::Uuid;
}

impl OfTenant for Tenant {
    fn tenant_id(&self) -> uuid::Uuid {
        self.id
    }
}

#[derive(diesel::QueryableByName)]
struct RoleExists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The outcome of `migrate_all`.
#[derive(Debug, Default, Serialize)]
pub struct MigrationReport {
    pub control_applied: Vec<String>,
    pub tenants: usize,
    /// Tenants with migrations to run (or every tenant, when all were touched).
    pub tenants_pending: usize,
    pub tenants_changed: usize,
    pub failures: Vec<(String, String)>,
}

/// What `migrate` would do, found without changing anything (`migrate --plan`).
#[derive(Debug, Default, Serialize)]
pub struct MigrationPlan {
    /// Versions pending in the control plane and in what the tenants share.
    pub control: Vec<String>,
    /// Tenants that are not deleted.
    pub tenants: usize,
    /// Each tenant with migrations pending, and those versions (oldest first).
    pub pending: Vec<(TenantIdentifier, Vec<String>)>,
    /// Each tenant whose migrations could not be read, and why (its server did not
    /// answer).
    pub unread: Vec<(TenantIdentifier, String)>,
}

impl MigrationPlan {
    /// Nothing to apply, as far as every tenant could be read.
    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.pending.is_empty() && self.unread.is_empty()
    }
}

/// Which tenants `migrate_all` touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Only those with migrations pending (found in a few statements).
    Pending,
    /// Every tenant, pending or not: re-applies the grants (e.g. to a new application role).
    Every,
}

/// One step of `migrate_all`, for progress output: one tenant with something to do.
pub struct Progress<'a> {
    pub done: usize,
    /// Tenants with something to do.
    pub total: usize,
    pub tenant: &'a TenantIdentifier,
    pub result: &'a Result<Vec<String>, MigrateError>,
    /// Since the first tenant started.
    pub elapsed: std::time::Duration,
}

impl Progress<'_> {
    /// The time the remaining tenants will take at the pace so far.
    pub fn eta(&self) -> std::time::Duration {
        let per_tenant = self.elapsed / self.done.max(1) as u32;
        per_tenant * (self.total - self.done) as u32
    }
}

impl Tenancy {
    /// Applies the control-plane migrations (the `tenancy` schema) and the migrations the
    /// isolation strategy shares between tenants, as the migration role, and grants the
    /// application role data access to them.
    pub async fn migrate_control(&self) -> Result<Vec<String>, MigrateError> {
        self.check_owner_session().await?;
        // The audit trail: add and read, never change (the trigger refuses it to anyone).
        // Quarantined identifiers: read and written by `destroy`; `release` (CLI) ends one
        // as the owner. Jobs and their tenants' turns: enqueued, claimed, ended and
        // pruned by the service.
        let grants = match &self.context().app_role {
            Some(role) => {
                let (schema, role) = (format!("\"{CONTROL_SCHEMA}\""), role.quoted());
                vec![
                    format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
                    format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.tenants TO {role}"),
                    format!("GRANT SELECT, INSERT ON {schema}.audit TO {role}"),
                    format!("REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.audit FROM {role}"),
                    format!("GRANT SELECT, INSERT, UPDATE ON {schema}.quarantine TO {role}"),
                    format!(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.jobs, {schema}.job_turns \
                         TO {role}"
                    ),
                    // Read to refuse deleting a tenant whose move is not finished.
                    format!("GRANT SELECT ON {schema}.tenant_moves TO {role}"),
                ]
            }
            None => Vec::new(),
        };
        let ctx = self.context();
        let mut applied = migrate::run_pending(
            &ctx.runtime,
            with_session_option(&ctx.owner, "search_path", CONTROL_SCHEMA),
            CONTROL_MIGRATIONS,
            "migrate:control".into(),
            vec![format!("CREATE SCHEMA IF NOT EXISTS \"{CONTROL_SCHEMA}\"")],
            grants,
        )
        .await?;
        applied.extend(self.strategy().migrate_shared(ctx).await?);
        Ok(applied)
    }

    /// Creates the application role of `TENANCY_DATABASE_URL` (with its password) as the
    /// migration role, unless it exists: `LOGIN`, and no superuser, `CREATEDB`,
    /// `CREATEROLE` or `BYPASSRLS`. The name and password travel in bind parameters and
    /// are quoted by PostgreSQL (`format('%I', '%L')`). Returns whether it was created.
    pub async fn create_app_role(&self) -> Result<bool, LifecycleError> {
        self.check_owner_session().await?;
        let ctx = self.context();
        let Some(role) = &ctx.app_role else {
            return Err(LifecycleError::Invalid(
                "TENANCY_DATABASE_URL and TENANCY_MIGRATION_DATABASE_URL name the same role: \
                 set TENANCY_MIGRATION_DATABASE_URL to the owner's URL"
                    .into(),
            ));
        };
        let password = ctx
            .app
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let mut conn = ctx.connect(ctx.owner.clone()).await?;
        let created = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                diesel::sql_query(
                    "SELECT set_config('tenancy.new_role', $1, true), \
                            set_config('tenancy.new_password', $2, true)",
                )
                .bind::<Text, _>(role.as_str())
                .bind::<Text, _>(password.as_deref().unwrap_or(""))
                .execute(conn)
                .await?;
                let exists: RoleExists = diesel::sql_query(
                    "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS exists",
                )
                .bind::<Text, _>(role.as_str())
                .get_result(conn)
                .await?;
                if exists.exists {
                    return Ok(false);
                }
                diesel::sql_query(
                    "DO $$ BEGIN EXECUTE format(\
                       'CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS%s', \
                       current_setting('tenancy.new_role'), \
                       CASE WHEN current_setting('tenancy.new_password') = '' THEN '' \
                            ELSE format(' PASSWORD %L', current_setting('tenancy.new_password')) END); \
                     END $$",
                )
                .execute(conn)
                .await?;
                Ok(true)
            })
            .await?;
        Ok(created)
    }

    /// Creates and provisions a tenant, as the application role (see
    /// [`Strategy::provision`]). Idempotent: a tenant left `provisioning` by an interrupted
    /// run is completed; an existing tenant in any other state is a conflict. A tenant
    /// returned still `provisioning` is completed by `migrate`.
    pub async fn create_tenant(
        &self,
        actor: &Actor,
        new: NewTenant,
    ) -> Result<Tenant, LifecycleError> {
        let identifier = new.identifier.clone();
        let params = new.audit_params();
        self.audited(
            actor,
            Operation::Create,
            &identifier,
            params,
            self.provision(new),
        )
        .await
    }

    async fn provision(&self, new: NewTenant) -> Result<Tenant, LifecycleError> {
        if !new.metadata.is_object() {
            return Err(LifecycleError::Invalid(
                "metadata must be a JSON object".into(),
            ));
        }
        check_visible("name", &new.name, 200)
            .and_then(|()| check_json("metadata", &new.metadata))
            .map_err(LifecycleError::Invalid)?;
        let name = new.name.trim();
{%- if isolation == "hybrid" %}
        let isolation = self.strategy().choose(new.isolation);
{%- else %}
        // Every tenant of this service is isolated the same way.
        let isolation = super::isolation::ISOLATION;
{%- endif %}
        if let Some(server) = &new.server {
{%- if isolation == "hybrid" %}
            if isolation != Isolation::Database {
                return Err(LifecycleError::Invalid(format!(
                    "a server is for a tenant with a database of its own (isolation \
                     database), not one isolated with {isolation}"
                )));
            }
{%- endif %}
            self.servers()
                .check(server)
                .map_err(LifecycleError::Invalid)?;
            if !self.context().has_owner {
                return Err(LifecycleError::Conflict(
                    "placing a tenant on another server takes the owner's rights, which this \
                     process does not hold (TENANCY_MIGRATION_DATABASE_URL): use \
                     `tenant create --server`"
                        .into(),
                ));
            }
        }
        let tenant = self.register(&new, name, isolation).await?;
        if tenant.status != TenantStatus::Provisioning {
            return Err(LifecycleError::Conflict(format!(
                "tenant '{}' already exists ({})",
                tenant.identifier, tenant.status
            )));
        }
        if let Some(asked) = &new.server
            && tenant.server.as_ref() != Some(asked)
        {
            return Err(LifecycleError::Conflict(format!(
                "tenant '{}' is being created on {} already",
                tenant.identifier,
                super::isolation::server_name(tenant.server.as_ref())
            )));
        }
        if self.context().has_owner {
            // What follows may be the owner's work: a database, a schema on another server.
            self.check_owner_session().await?;
        }
        let provisioned = {
            let mut conn = self.control.get().await?;
            let provisioned = self
                .strategy()
                .provision(self.context(), &mut conn, &tenant)
                .await;
            conn.finish(provisioned.is_ok()).await?;
            provisioned?
        };
        if !provisioned {
            tracing::info!(tenant.id = %tenant.id, tenant.identifier = %tenant.identifier, "tenant registered; `migrate` completes its provisioning");
            return Ok(tenant);
        }
        let mut conn = self.control.get().await?;
        let active = registry::transition(
            &mut conn,
            tenant.id,
            &[TenantStatus::Provisioning],
            TenantStatus::Active,
        )
        .await?;
        conn.finish(true).await?;
        self.directory
            .forget(active.as_ref().unwrap_or(&tenant))
            .await;
        match active {
            Some(active) => Ok(active),
            // Another process completed it at the same time.
            None => self.get_tenant(&new.identifier).await,
        }
    }

    /// Registers `new` as `provisioning` (or finds it, registered by an interrupted
    /// creation), unless its identifier is quarantined or the service is full.
    async fn register(
        &self,
        new: &NewTenant,
        name: &str,
        isolation: crate::domain::Isolation,
    ) -> Result<Tenant, LifecycleError> {
        let mut conn = self.control.get().await?;
        let max = self.settings.max_tenants;
        let (identifier, metadata) = (&new.identifier, &new.metadata);
        let tenant = conn
            .transaction(async |conn| {
                // A new row, not the completion of an interrupted provisioning.
                if registry::find_by_identifier(conn, identifier)
                    .await?
                    .is_none()
                {
                    if let Some(until) = registry::quarantined_until(conn, identifier).await? {
                        return Ok(Err(LifecycleError::Conflict(format!(
                            "identifier '{identifier}' belonged to a destroyed tenant and \
                             is quarantined until {} (TENANCY_IDENTIFIER_QUARANTINE_DAYS); \
                             `tenant release {identifier}` frees it earlier",
                            until.format("%Y-%m-%d %H:%M UTC")
                        ))));
                    }
                    if let Some(max) = max {
                        let held = registry::count_for_creation(conn).await?;
                        if held >= max as i64 {
                            return Ok(Err(LifecycleError::Conflict(format!(
                                "this service holds {held} tenants, its limit \
                                 (TENANCY_MAX_TENANTS); destroy one or raise the limit"
                            ))));
                        }
                    }
                }
                // Its server, chosen once: a repeated creation keeps the recorded one.
                let server = match &new.server {
                    Some(server) => Some(server.clone()),
{%- if isolation == "hybrid" %}
                    // The schema and rls tiers are on the default server.
                    None if isolation != Isolation::Database => None,
{%- endif %}
                    None => self.servers().choose(conn, None).await?,
                };
                let placed = server.as_ref();
                registry::insert_or_get(conn, identifier, name, isolation, metadata, placed)
                    .await
                    .map(Ok)
            })
            .await?;
        conn.finish(true).await?;
        tenant
    }

    pub async fn get_tenant(
        &self,
        identifier: &TenantIdentifier,
    ) -> Result<Tenant, LifecycleError> {
        let mut conn = self.control.get().await?;
        let tenant = registry::find_by_identifier(&mut conn, identifier)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(identifier.to_string()))?;
        self.directory.note_decoded([&tenant], false);
        Ok(tenant)
    }

    /// Every tenant, deleted ones too; one whose metadata cannot be decoded is listed with
    /// `null` metadata (and counted by `/health`), never keeps the others from the list.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, LifecycleError> {
        let mut conn = self.control.get().await?;
        let tenants = registry::list(&mut conn).await?;
        self.directory.note_decoded(&tenants, true);
        Ok(tenants)
    }

    pub async fn suspend_tenant(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
    ) -> Result<Tenant, LifecycleError> {
        let run = self.transition(identifier, &[TenantStatus::Active], TenantStatus::Suspended);
        self.audited(actor, Operation::Suspend, identifier, empty_object(), run)
            .await
    }

    pub async fn activate_tenant(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
    ) -> Result<Tenant, LifecycleError> {
        let run = self.transition(identifier, &[TenantStatus::Suspended], TenantStatus::Active);
        self.audited(actor, Operation::Activate, identifier, empty_object(), run)
            .await
    }

    /// Soft delete: the tenant is no longer served; its data stays until `destroy_tenant`.
    pub async fn delete_tenant(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
    ) -> Result<Tenant, LifecycleError> {
        let run = async {
            self.refuse_mid_move(&self.get_tenant(identifier).await?, "delete")
                .await?;
            let from = [
                TenantStatus::Active,
                TenantStatus::Suspended,
                TenantStatus::Provisioning,
            ];
            self.transition(identifier, &from, TenantStatus::Deleted)
                .await
        };
        self.audited(actor, Operation::Delete, identifier, empty_object(), run)
            .await
    }

    /// Drops a deleted tenant's storage and registry row, and quarantines its identifier
    /// (`TENANCY_IDENTIFIER_QUARANTINE_DAYS`). `confirmation` must repeat the identifier.
    /// Only storage derived from a registered tenant is ever dropped. Returns the tenant
    /// as it was.
    pub async fn destroy_tenant(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
        confirmation: &str,
    ) -> Result<Tenant, LifecycleError> {
        let run = self.destroy(identifier, confirmation);
        self.audited(actor, Operation::Destroy, identifier, empty_object(), run)
            .await
    }

    /// What `destroy_tenant` would drop, changing nothing; also for a tenant not yet
    /// deleted (which `destroy_tenant` refuses).
    pub async fn destroy_plan(
        &self,
        identifier: &TenantIdentifier,
    ) -> Result<(Tenant, DestroyPlan), LifecycleError> {
        self.check_owner_session().await?;
        let tenant = self.get_tenant(identifier).await?;
        let ctx = self.context();
        let mut conn = ctx.connect(ctx.owner.clone()).await?;
        let plan = self
            .strategy()
            .destroy_plan(ctx, &mut conn, &tenant)
            .await?;
        Ok((tenant, plan))
    }

    async fn destroy(
        &self,
        identifier: &TenantIdentifier,
        confirmation: &str,
    ) -> Result<Tenant, LifecycleError> {
        if confirmation != identifier.as_str() {
            return Err(LifecycleError::Invalid(
                "destroy needs the tenant identifier repeated as confirmation".into(),
            ));
        }
        let tenant = self.get_tenant(identifier).await?;
        if tenant.status != TenantStatus::Deleted {
            return Err(LifecycleError::Conflict(format!(
                "tenant '{identifier}' is {}: delete it before destroying it",
                tenant.status
            )));
        }
{%- if isolation == "schema" %}
        if tenant.server.is_some() {
            if !self.context().has_owner {
                return Err(LifecycleError::Conflict(
                    "dropping a schema on another server takes the owner's rights, which \
                     this process does not hold (TENANCY_MIGRATION_DATABASE_URL): use \
                     `tenant destroy`"
                        .into(),
                ));
            }
            self.check_owner_session().await?;
        }
{%- endif %}
        self.refuse_mid_move(&tenant, "destroy").await?;
{%- if tenant_databases %}
        if tenant.isolation == Isolation::Database {
            if !self.context().has_owner {
                return Err(LifecycleError::Conflict(
                    "dropping a tenant's database takes the owner's rights, which this \
                     process does not hold (TENANCY_MIGRATION_DATABASE_URL): use `tenant \
                     destroy`"
                        .into(),
                ));
            }
            self.check_owner_session().await?;
        }
{%- endif %}
        self.directory.forget(&tenant).await;
        self.close_connections_of(&tenant);
        // The storage, the quarantine and the row in one transaction of the application
        // role (the strategy drops what takes the owner's rights through a function of
        // the owner's, or as the owner). Repeatable: a failure leaves the row.
        let ctx = self.context();
        let days = self.settings.identifier_quarantine_days;
        let mut conn = self.control.get().await?;
        let destroyed = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                self.strategy().destroy(ctx, conn, &tenant).await?;
                if days > 0 {
                    registry::quarantine(conn, &tenant, days).await?;
                }
                registry::delete_row(conn, tenant.id).await?;
                Ok(())
            })
            .await;
        conn.finish(destroyed.is_ok()).await?;
        destroyed?;
        tracing::info!(tenant.id = %tenant.id, tenant.identifier = %identifier, "tenant destroyed");
        Ok(tenant)
    }

    /// Lets a new tenant take `identifier` before its quarantine ends (as the owner);
    /// refused when it is not quarantined.
    pub async fn release_identifier(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
    ) -> Result<(), LifecycleError> {
        let started = Instant::now();
        let released = self.release(identifier).await;
        let outcome = released
            .as_ref()
            .err()
            .map_or(Outcome::Ok, LifecycleError::outcome);
        let error = released.as_ref().err().map(ToString::to_string);
        self.audit(Record {
            actor,
            tenant_id: None,
            identifier,
            operation: Operation::Release,
            params: empty_object(),
            outcome,
            error,
            duration: started.elapsed(),
        })
        .await;
        released
    }

    async fn release(&self, identifier: &TenantIdentifier) -> Result<(), LifecycleError> {
        self.check_owner_session().await?;
        let ctx = self.context();
        let mut conn = ctx.connect(ctx.owner.clone()).await?;
        if registry::release(&mut conn, identifier).await? {
            Ok(())
        } else {
            Err(LifecycleError::Invalid(format!(
                "identifier '{identifier}' is not quarantined"
            )))
        }
    }

    /// What the audit trail holds of `identifier`, newest first (see [`audit::history`]).
    pub async fn history(
        &self,
        identifier: &TenantIdentifier,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<audit::Entry>, LifecycleError> {
        let mut conn = self.control.get().await?;
        let entries = audit::history(&mut conn, identifier, limit, before).await?;
        conn.finish(true).await?;
        Ok(entries)
    }

    /// Sets a tenant's own limits (`None` in a field: the service's setting applies);
    /// every replica uses them from its next checkout for the tenant.
    pub async fn set_limits(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
        limits: TenantLimits,
    ) -> Result<Tenant, LifecycleError> {
        let params = serde_json::to_value(limits).unwrap_or_else(|_| empty_object());
        let run = self.limits(identifier, limits);
        self.audited(actor, Operation::Limits, identifier, params, run)
            .await
    }

    async fn limits(
        &self,
        identifier: &TenantIdentifier,
        limits: TenantLimits,
    ) -> Result<Tenant, LifecycleError> {
        let tenant = self.get_tenant(identifier).await?;
        let mut conn = self.control.get().await?;
        let changed = registry::set_limits(&mut conn, tenant.id, &limits).await?;
        conn.finish(true).await?;
        self.directory
            .forget(changed.as_ref().unwrap_or(&tenant))
            .await;
        changed.ok_or_else(|| LifecycleError::NotFound(identifier.to_string()))
    }

    /// Makes a tenant read-only (writes get 503) or takes writes again; every replica
    /// follows within a second. `migrating` is `migrate`'s own.
    pub async fn set_maintenance(
        &self,
        actor: &Actor,
        identifier: &TenantIdentifier,
        mode: Maintenance,
    ) -> Result<Tenant, LifecycleError> {
        let params = serde_json::json!({ "mode": mode });
        let run = self.maintenance(identifier, mode);
        self.audited(actor, Operation::Maintenance, identifier, params, run)
            .await
    }

    async fn maintenance(
        &self,
        identifier: &TenantIdentifier,
        mode: Maintenance,
    ) -> Result<Tenant, LifecycleError> {
        if mode == Maintenance::Migrating {
            return Err(LifecycleError::Invalid(
                "maintenance 'migrating' is set by `migrate` alone: read_only or off".into(),
            ));
        }
        if mode == Maintenance::Moving {
            return Err(LifecycleError::Invalid(
                "maintenance 'moving' is set by `tenant move` alone: read_only or off".into(),
            ));
        }
        let tenant = self.get_tenant(identifier).await?;
        let mut conn = self.control.get().await?;
        let changed = registry::set_maintenance(&mut conn, tenant.id, mode).await?;
        conn.finish(true).await?;
        self.directory
            .forget(changed.as_ref().unwrap_or(&tenant))
            .await;
        let changed = changed.ok_or_else(|| LifecycleError::NotFound(identifier.to_string()))?;
        tracing::info!(tenant.id = %changed.id, tenant.identifier = %identifier, maintenance = %mode, "tenant maintenance set");
        Ok(changed)
    }

    /// Runs `run` (`operation` on `identifier`, asked by `actor`) and records it in the
    /// audit trail and `/metrics`, however it ends.
    pub(crate) async fn audited<T: OfTenant>(
        &self,
        actor: &Actor,
        operation: Operation,
        identifier: &TenantIdentifier,
        params: serde_json::Value,
        run: impl Future<Output = Result<T, LifecycleError>>,
    ) -> Result<T, LifecycleError> {
        let started = Instant::now();
        let result = run.await;
        let duration = started.elapsed();
        let (tenant_id, outcome, error) = match &result {
            Ok(done) => (Some(done.tenant_id()), Outcome::Ok, None),
            // The tenant it concerned, if there is one.
            Err(e) => (
                self.get_tenant(identifier).await.ok().map(|t| t.id),
                e.outcome(),
                Some(e.to_string()),
            ),
        };
        self.audit(Record {
            actor,
            tenant_id,
            identifier,
            operation,
            params,
            outcome,
            error,
            duration,
        })
        .await;
        result
    }

    /// Appends `record` to the audit trail and counts it in `/metrics`. The operation has
    /// happened either way: a trail that cannot be written is logged as an error.
    async fn audit(&self, record: Record<'_>) {
        self.metrics.operation(
            record.operation.as_str(),
            record.outcome.as_str(),
            record.duration,
        );
        let (operation, identifier) = (record.operation.as_str(), record.identifier.clone());
        let appended = async {
            let mut conn = self.control.get().await?;
            audit::append(&mut conn, record).await?;
            conn.finish(true).await?;
            Ok::<_, LifecycleError>(())
        };
        if let Err(error) = appended.await {
            tracing::error!(tenant.identifier = %identifier, operation, %error, "the audit trail could not be written");
        }
    }

    async fn transition(
        &self,
        identifier: &TenantIdentifier,
        from: &[TenantStatus],
        to: TenantStatus,
    ) -> Result<Tenant, LifecycleError> {
        let tenant = self.get_tenant(identifier).await?;
        if tenant.status == to {
            return Ok(tenant);
        }
        let mut conn = self.control.get().await?;
        let changed = registry::transition(&mut conn, tenant.id, from, to).await?;
        conn.finish(true).await?;
        self.directory
            .forget(changed.as_ref().unwrap_or(&tenant))
            .await;
        changed.ok_or_else(|| {
            LifecycleError::Conflict(format!(
                "tenant '{identifier}' is {}: it cannot become {to}",
                tenant.status
            ))
        })
    }

    /// What `migrate` would apply, to the control plane and to each tenant that is not
    /// deleted, found in a few statements; changes nothing.
    pub async fn plan_migrations(&self) -> Result<MigrationPlan, LifecycleError> {
        self.check_owner_session().await?;
        let ctx = self.context();
        let mut control = migrate::pending_in_schema(
            &ctx.runtime,
            ctx.owner.clone(),
            &CONTROL_MIGRATIONS,
            CONTROL_SCHEMA,
        )
        .await?;
        control.extend(self.strategy().pending_shared(ctx).await?);
        // Before the control plane's first migration there is no registry to read.
        let first = migrate::versions(&CONTROL_MIGRATIONS)?.into_iter().next();
        if first.is_some_and(|first| control.contains(&first)) {
            return Ok(MigrationPlan {
                control,
                ..MigrationPlan::default()
            });
        }
        let (tenants, pending) = self.pending_tenants().await?;
        let mut plan = MigrationPlan {
            control,
            tenants: tenants.len(),
            ..MigrationPlan::default()
        };
        for (tenant, pending) in tenants.into_iter().zip(pending) {
            match pending {
                Ok(versions) if versions.is_empty() => {}
                Ok(versions) => plan.pending.push((tenant.identifier, versions)),
                Err(why) => plan.unread.push((tenant.identifier, why)),
            }
        }
        Ok(plan)
    }

    /// The tenants that are not deleted, and what each lacks.
    async fn pending_tenants(&self) -> Result<(Vec<Tenant>, Vec<Pending>), LifecycleError> {
        let tenants: Vec<Tenant> = self
            .list_tenants()
            .await?
            .into_iter()
            .filter(|t| t.status != TenantStatus::Deleted)
            .collect();
        let pending = self.strategy().pending(self.context(), &tenants).await?;
        Ok((tenants, pending))
    }

    /// Migrates the control plane, then the tenants (not deleted) that `touch` names,
    /// `concurrency` at a time; the others are not connected to. A tenant is read-only
    /// (`migrating`) while it is migrated, unless an operator's maintenance is on, so no
    /// write races its migration. A tenant that fails is reported and the others go on; so
    /// is one whose migrations could not be read (its server did not answer), untried.
    pub async fn migrate_all(
        &self,
        actor: &Actor,
        concurrency: usize,
        touch: Touch,
        mut progress: impl FnMut(Progress<'_>),
    ) -> Result<MigrationReport, LifecycleError> {
        let control_applied = self.migrate_control().await?;
        let (tenants, pending) = self.pending_tenants().await?;
        let mut report = MigrationReport {
            control_applied,
            tenants: tenants.len(),
            ..MigrationReport::default()
        };
        let mut work = Vec::new();
        for (tenant, pending) in tenants.iter().zip(&pending) {
            let up_to_date = pending.as_ref().is_ok_and(Vec::is_empty);
            if touch == Touch::Every || !up_to_date {
                work.push((tenant, pending.as_ref().err()));
            } else if tenant.maintenance == Maintenance::Migrating {
                // Left by a `migrate` that stopped half-way; nothing is left to do.
                self.end_migrating(tenant).await?;
            }
        }
        report.tenants_pending = work.len();
        let started = Instant::now();
        let mut results = futures_util::stream::iter(work)
            .map(|(tenant, unread)| async move {
                let began = Instant::now();
                let result = match unread {
                    // Reported, not tried: its server did not answer a moment ago.
                    Some(why) => Err(MigrateError::Migration(format!(
                        "its migrations could not be read: {why}"
                    ))),
                    None => self.migrate_tenant(tenant).await,
                };
                let duration = began.elapsed();
                self.audit(Record {
                    actor,
                    tenant_id: Some(tenant.id),
                    identifier: &tenant.identifier,
                    operation: Operation::Migrate,
                    params: serde_json::json!({
                        "applied": result.as_ref().map(Vec::as_slice).unwrap_or_default()
                    }),
                    outcome: if result.is_ok() { Outcome::Ok } else { Outcome::Failed },
                    error: result.as_ref().err().map(ToString::to_string),
                    duration,
                })
                .await;
                tracing::debug!(tenant.identifier = %tenant.identifier, elapsed_ms = duration.as_millis() as u64, "tenant migrated");
                (tenant, result)
            })
            .buffer_unordered(concurrency.max(1));
        let mut done = 0;
        while let Some((tenant, result)) = results.next().await {
            done += 1;
            match &result {
                Ok(applied) if !applied.is_empty() => report.tenants_changed += 1,
                Ok(_) => {}
                Err(e) => report
                    .failures
                    .push((tenant.identifier.to_string(), e.to_string())),
            }
            progress(Progress {
                done,
                total: report.tenants_pending,
                tenant: &tenant.identifier,
                result: &result,
                elapsed: started.elapsed(),
            });
        }
        Ok(report)
    }

    /// Migrates one tenant, read-only (`migrating`) meanwhile unless its maintenance was
    /// already on. A write already under way finishes first: the migration's DDL waits for
    /// its locks.
    async fn migrate_tenant(&self, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
        if tenant.maintenance == Maintenance::Moving {
            // Its copy on the target was migrated when the move made it.
            return Err(MigrateError::Migration(format!(
                "tenant '{}' is moving to another server: finish the move (`tenant move`), \
                 then run `migrate` again",
                tenant.identifier
            )));
        }
        let marked = {
            let mut conn = self.control.get().await.map_err(pool_failed)?;
            let marked = registry::switch_maintenance(
                &mut conn,
                tenant.id,
                Maintenance::Off,
                Maintenance::Migrating,
            )
            .await?;
            conn.finish(true).await?;
            marked
        };
        if let Some(marked) = &marked {
            self.directory.forget(marked).await;
        }
        let mut result = self.strategy().migrate(self.context(), tenant).await;
        if result.is_ok()
            && tenant.status == TenantStatus::Provisioning
            && let Err(error) = self.complete_provisioning(tenant).await
        {
            // Registered by a process without the owner's rights, or interrupted.
            result = Err(error);
        }
        if marked.is_some() {
            self.end_migrating(tenant)
                .await
                .map_err(|e| MigrateError::Migration(format!("ending maintenance: {e}")))?;
        }
        result
    }

    /// Makes a tenant whose storage `migrate` just completed `active`.
    async fn complete_provisioning(&self, tenant: &Tenant) -> Result<(), MigrateError> {
        let mut conn =
            self.control.get().await.map_err(|e| {
                MigrateError::Migration(format!("completing the provisioning: {e}"))
            })?;
        let active = registry::transition(
            &mut conn,
            tenant.id,
            &[TenantStatus::Provisioning],
            TenantStatus::Active,
        )
        .await?;
        conn.finish(true).await?;
        if let Some(active) = &active {
            self.directory.forget(active).await;
        }
        Ok(())
    }

    /// Ends `migrating` on `tenant`.
    async fn end_migrating(&self, tenant: &Tenant) -> Result<(), LifecycleError> {
        self.switch_maintenance(tenant, Maintenance::Migrating, Maintenance::Off)
            .await
            .map(drop)
    }

    /// Sets `tenant`'s maintenance to `to` if it is `from`, and lets every replica know;
    /// the tenant, if it was switched.
    pub(super) async fn switch_maintenance(
        &self,
        tenant: &Tenant,
        from: Maintenance,
        to: Maintenance,
    ) -> Result<Option<Tenant>, LifecycleError> {
        let mut conn = self.control.get().await?;
        let switched = registry::switch_maintenance(&mut conn, tenant.id, from, to).await?;
        conn.finish(true).await?;
        if let Some(switched) = &switched {
            self.directory.forget(switched).await;
        }
        Ok(switched)
    }
}

fn pool_failed(error: PoolError) -> MigrateError {
    MigrateError::Migration(format!("maintenance mode: {error}"))
}

impl Tenancy {
    /// What a move of `tenant` left unfinished, if one is under way or stopped partway:
    /// the tenant read-only for it, or its data (or a copy made for it) in a second place.
    pub(super) async fn unfinished_move(
        &self,
        tenant: &Tenant,
    ) -> Result<Option<String>, LifecycleError> {
        if tenant.maintenance == Maintenance::Moving {
            return Ok(Some("it is read-only for its move".to_owned()));
        }
        let mut conn = self.control.get().await?;
        let left = self.strategy().unfinished_move(&mut conn, tenant).await?;
        conn.finish(true).await?;
        Ok(left)
    }

    /// Refuses to `what` (delete, destroy) a tenant whose move is under way or stopped
    /// partway: its data is in two places (or a copy waits for it) until the move
    /// finishes, and destroying it would leave one of them behind, for no one to drop.
    async fn refuse_mid_move(&self, tenant: &Tenant, what: &str) -> Result<(), LifecycleError> {
        match self.unfinished_move(tenant).await? {
            None => Ok(()),
            Some(left) => Err(LifecycleError::Conflict(format!(
                "tenant '{}' is moving ({left}): finish the move (run the same `tenant move` \
                 again), then {what} it",
                tenant.identifier
            ))),
        }
    }
}
