//! Hybrid: each tenant is isolated the way its registry row says: `database` (a database
//! of its own, on any server of `TENANCY_DATABASE_SERVERS`: the largest tenants),
//! `schema` (its own schema, e.g. premium tenants) or `rls` (shared tables under
//! Row-Level Security, the long tail), chosen at creation (`--isolation`, the admin API's
//! `isolation` field, or `TENANCY_DEFAULT_ISOLATION`). The `schema` and `rls` tiers share
//! the pool's connections, scoped by the pool (`search_path` and `app.tenant_id`); a
//! `database` tenant's connections are its own. Middleware, extractor and handlers are
//! the same for all three.

mod down;
mod tiers;
mod to_database;

pub use tiers::in_tier;

use diesel::sql_types::Text;
use diesel::{OptionalExtension, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::database::{DATABASE_KEYS, DatabaseStrategy, TenantDatabaseSettings};
use super::rls::RlsStrategy;
use super::schema::{SchemaName, SchemaStrategy};
use super::{Context, DestroyPlan, Exists, Pending, PlaceError, Relocate, Route, Strategy};
use crate::db::migrate::MigrateError;
use crate::db::pool::PoolError;
use crate::db::settings::DatabaseSettings;
use crate::db::tls::PgConfig;
use crate::domain::{Isolation, Tenant};
use crate::settings::{ConfigError, Key, Source};

/// The tiers this service offers.
pub const TIERS: [Isolation; 3] = [Isolation::Schema, Isolation::Rls, Isolation::Database];

/// The OpenAPI schema of a tier asked for: one of [`TIERS`], or null for the default.
pub fn tier_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(
            TIERS
                .iter()
                .map(|tier| serde_json::Value::from(tier.as_str()))
                .chain([serde_json::Value::Null]),
        ))
        .build()
}

pub struct HybridStrategy {
    schema: SchemaStrategy,
    rls: RlsStrategy,
    database: DatabaseStrategy,
    /// The tier of a tenant created without one.
    default_isolation: Isolation,
}

/// What hybrid reads from the configuration.
#[derive(Debug, Clone)]
pub struct HybridSettings {
    /// The tier of a tenant created without one: `schema`, `rls` or `database`
    /// (`TENANCY_DEFAULT_ISOLATION`).
    pub default_isolation: Isolation,
    /// Where the `database` tier's databases are (`TENANCY_TENANT_DATABASE_PREFIX`,
    /// `TENANCY_DATABASE_SERVERS`, ...).
    pub database: TenantDatabaseSettings,
}

impl HybridStrategy {
    /// The tier of a new tenant: the one asked for, or `TENANCY_DEFAULT_ISOLATION`.
    pub fn choose(&self, requested: Option<Isolation>) -> Isolation {
        requested.unwrap_or(self.default_isolation)
    }

    /// The `database` tier: placement on servers, and moves between them.
    pub fn databases(&self) -> &DatabaseStrategy {
        &self.database
    }

    /// The schema `tenant`, in another tier now, left (for a database of its own, or for
    /// the shared tables), if it is still there. `conn`: any connection to the control
    /// database (the catalog is read).
    pub async fn old_schema(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<Option<SchemaName>, PlaceError> {
        if tenant.isolation == Isolation::Schema {
            return Ok(None);
        }
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let found: Option<Exists> =
            diesel::sql_query("SELECT true AS exists FROM pg_namespace WHERE nspname = $1")
                .bind::<Text, _>(schema.as_str())
                .get_result(conn)
                .await
                .optional()?;
        Ok(found.map(|_| schema))
    }

    /// What a change of `tenant`'s tier stopped partway left outside its tier: a schema,
    /// a database (running the same change again finishes it, and drops that).
    pub async fn left_by_tier_change(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<Option<String>, PlaceError> {
        if let Some(schema) = self.old_schema(conn, tenant).await? {
            return Ok(Some(format!(
                "its old schema {} is still there",
                schema.quoted()
            )));
        }
        let database = self.database.database_left(conn, tenant).await?;
        Ok(database.map(|server| format!("its old database on {server} is still there")))
    }

    /// What a move of `tenant` left unfinished, between servers or between tiers.
    pub async fn unfinished_move(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<Option<String>, PlaceError> {
        match self.database.unfinished_move(conn, tenant).await? {
            Some(left) => Ok(Some(left)),
            None => self.left_by_tier_change(conn, tenant).await,
        }
    }
}

impl Strategy for HybridStrategy {
    type Settings = HybridSettings;

    const KEYS: &'static [&'static [Key]] = &[
        &[("default_isolation", Some("rls"))],
        DATABASE_KEYS,
        super::servers::SERVER_KEYS,
    ];

    fn read_settings(src: &Source) -> Result<HybridSettings, ConfigError> {
        let default_isolation = src
            .get("default_isolation")
            .parse::<Isolation>()
            .ok()
            .ok_or_else(|| {
                ConfigError::invalid("default_isolation", "must be schema, rls or database")
            })?;
        Ok(HybridSettings {
            default_isolation,
            database: DatabaseStrategy::read_settings(src)?,
        })
    }

    fn new(settings: &HybridSettings, database: &DatabaseSettings) -> Self {
        Self {
            // Its `schema` tier is on the default server.
            schema: SchemaStrategy::new(&Default::default(), database),
            rls: RlsStrategy::new(&Default::default(), database),
            database: DatabaseStrategy::new(&settings.database, database),
            default_isolation: settings.default_isolation,
        }
    }

    fn route(&self, tenant: &Tenant) -> Result<Route, String> {
        match tenant.isolation {
            Isolation::Schema => self.schema.route(tenant),
            Isolation::Rls => self.rls.route(tenant),
            Isolation::Database => self.database.route(tenant),
        }
    }

    async fn connect_config(&self, ctx: &Context, tenant: &Tenant) -> Result<PgConfig, PoolError> {
        match tenant.isolation {
            Isolation::Schema => self.schema.connect_config(ctx, tenant).await,
            Isolation::Rls => self.rls.connect_config(ctx, tenant).await,
            Isolation::Database => self.database.connect_config(ctx, tenant).await,
        }
    }

    /// What each tier shares: the schema tier's provisioning functions, the `rls` tier's
    /// tables, the `database` tier's records of where each database is.
    async fn migrate_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        let mut applied = self.schema.migrate_shared(ctx).await?;
        applied.extend(self.rls.migrate_shared(ctx).await?);
        applied.extend(self.database.migrate_shared(ctx).await?);
        Ok(applied)
    }

    async fn pending_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        let mut pending = self.schema.pending_shared(ctx).await?;
        pending.extend(self.rls.pending_shared(ctx).await?);
        pending.extend(self.database.pending_shared(ctx).await?);
        Ok(pending)
    }

    /// Each tier's tenants as that tier finds them (the `rls` tier's have nothing of their
    /// own).
    async fn pending(
        &self,
        ctx: &Context,
        tenants: &[Tenant],
    ) -> Result<Vec<Pending>, MigrateError> {
        let of_tier = |tier: Isolation| -> Vec<Tenant> {
            tenants
                .iter()
                .filter(|t| t.isolation == tier)
                .cloned()
                .collect()
        };
        let in_schemas = of_tier(Isolation::Schema);
        let in_databases = of_tier(Isolation::Database);
        let mut schemas = self.schema.pending(ctx, &in_schemas).await?.into_iter();
        let mut databases = self.database.pending(ctx, &in_databases).await?.into_iter();
        Ok(tenants
            .iter()
            .map(|t| match t.isolation {
                Isolation::Schema => schemas.next().unwrap_or(Ok(Vec::new())),
                Isolation::Database => databases.next().unwrap_or(Ok(Vec::new())),
                _ => Ok(Vec::new()),
            })
            .collect())
    }

    async fn provision(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<bool, MigrateError> {
        match tenant.isolation {
            Isolation::Schema => self.schema.provision(ctx, conn, tenant).await,
            Isolation::Rls => self.rls.provision(ctx, conn, tenant).await,
            Isolation::Database => self.database.provision(ctx, conn, tenant).await,
        }
    }

    async fn migrate(&self, ctx: &Context, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
        match tenant.isolation {
            Isolation::Schema => self.schema.migrate(ctx, tenant).await,
            Isolation::Rls => self.rls.migrate(ctx, tenant).await,
            Isolation::Database => self.database.migrate(ctx, tenant).await,
        }
    }

    async fn destroy(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<()> {
        match tenant.isolation {
            Isolation::Schema => self.schema.destroy(ctx, conn, tenant).await,
            Isolation::Rls => self.rls.destroy(ctx, conn, tenant).await,
            Isolation::Database => self.database.destroy(ctx, conn, tenant).await,
        }
    }

    async fn destroy_plan(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<DestroyPlan> {
        match tenant.isolation {
            Isolation::Schema => self.schema.destroy_plan(ctx, conn, tenant).await,
            Isolation::Rls => self.rls.destroy_plan(ctx, conn, tenant).await,
            Isolation::Database => self.database.destroy_plan(ctx, conn, tenant).await,
        }
    }

    /// The `rls` tier needs a role that Row-Level Security restricts; no tier's storage
    /// may belong to it.
    async fn check_app_role(&self, conn: &mut AsyncPgConnection) -> Result<(), String> {
        self.schema.check_app_role(conn).await?;
        self.rls.check_app_role(conn).await?;
        self.database.check_app_role(conn).await
    }
}
