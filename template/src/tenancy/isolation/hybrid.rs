//! Hybrid: each tenant is isolated the way its registry row says, `schema` (its own
//! schema, e.g. premium tenants) or `rls` (shared tables under Row-Level Security, the
//! long tail), chosen at creation (`--isolation`, the admin API's `isolation` field, or
//! `TENANCY_DEFAULT_ISOLATION`). Both tiers share the pool's connections: the scope the
//! pool sets (`search_path` and `app.tenant_id`) is the tier's, so middleware, extractor
//! and handlers are the same for both.

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;

use super::rls::RlsStrategy;
use super::schema::SchemaStrategy;
use super::{Context, DestroyPlan, Route, Strategy};
use crate::db::migrate::MigrateError;
use crate::db::pool::PoolError;
use crate::db::settings::DatabaseSettings;
use crate::db::tls::PgConfig;
use crate::domain::{Isolation, Tenant};
use crate::settings::{ConfigError, Key, Source};

/// The tiers this service offers.
pub const TIERS: [Isolation; 2] = [Isolation::Schema, Isolation::Rls];

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
    /// The tier of a tenant created without one.
    default_isolation: Isolation,
}

/// What hybrid reads from the configuration.
#[derive(Debug, Clone)]
pub struct HybridSettings {
    /// The tier of a tenant created without one: `schema` or `rls`
    /// (`TENANCY_DEFAULT_ISOLATION`).
    pub default_isolation: Isolation,
}

impl Strategy for HybridStrategy {
    type Settings = HybridSettings;

    const KEYS: &'static [Key] = &[("default_isolation", Some("rls"))];

    fn read_settings(src: &Source) -> Result<HybridSettings, ConfigError> {
        let default_isolation = src
            .get("default_isolation")
            .parse::<Isolation>()
            .ok()
            .filter(|i| TIERS.contains(i))
            .ok_or_else(|| ConfigError::invalid("default_isolation", "must be schema or rls"))?;
        Ok(HybridSettings { default_isolation })
    }

    fn new(settings: &HybridSettings, database: &DatabaseSettings) -> Self {
        Self {
            schema: SchemaStrategy::new(&(), database),
            rls: RlsStrategy::new(&(), database),
            default_isolation: settings.default_isolation,
        }
    }

    fn route(&self, tenant: &Tenant) -> Result<Route, String> {
        match tenant.isolation {
            Isolation::Schema => self.schema.route(tenant),
            Isolation::Rls => self.rls.route(tenant),
            other => Err(unsupported(other)),
        }
    }

    async fn connect_config(&self, ctx: &Context, tenant: &Tenant) -> Result<PgConfig, PoolError> {
        match tenant.isolation {
            Isolation::Schema => self.schema.connect_config(ctx, tenant).await,
            Isolation::Rls => self.rls.connect_config(ctx, tenant).await,
            other => Err(PoolError::Isolation(unsupported(other))),
        }
    }

    /// The shared tables of the `rls` tier (the `schema` tier shares nothing).
    async fn migrate_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        let mut applied = self.schema.migrate_shared(ctx).await?;
        applied.extend(self.rls.migrate_shared(ctx).await?);
        Ok(applied)
    }

    async fn pending_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        let mut pending = self.schema.pending_shared(ctx).await?;
        pending.extend(self.rls.pending_shared(ctx).await?);
        Ok(pending)
    }

    /// The `schema` tier's tenants in a few statements; the `rls` tier's have nothing of
    /// their own.
    async fn pending(
        &self,
        ctx: &Context,
        tenants: &[Tenant],
    ) -> Result<Vec<Vec<String>>, MigrateError> {
        let in_schemas: Vec<Tenant> = tenants
            .iter()
            .filter(|t| t.isolation == Isolation::Schema)
            .cloned()
            .collect();
        let mut found = self.schema.pending(ctx, &in_schemas).await?.into_iter();
        Ok(tenants
            .iter()
            .map(|t| match t.isolation {
                Isolation::Schema => found.next().unwrap_or_default(),
                _ => Vec::new(),
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
            other => Err(MigrateError::Migration(unsupported(other))),
        }
    }

    async fn migrate(&self, ctx: &Context, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
        match tenant.isolation {
            Isolation::Schema => self.schema.migrate(ctx, tenant).await,
            Isolation::Rls => self.rls.migrate(ctx, tenant).await,
            other => Err(MigrateError::Migration(unsupported(other))),
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
            other => Err(super::query_error(unsupported(other))),
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
            other => Err(super::query_error(unsupported(other))),
        }
    }

    /// The `rls` tier needs a role that Row-Level Security restricts.
    async fn check_app_role(&self, conn: &mut AsyncPgConnection) -> Result<(), String> {
        self.schema.check_app_role(conn).await?;
        self.rls.check_app_role(conn).await
    }

    /// The tier asked for, or `TENANCY_DEFAULT_ISOLATION`.
    fn choose(&self, requested: Option<Isolation>) -> Result<Isolation, String> {
        let isolation = requested.unwrap_or(self.default_isolation);
        if TIERS.contains(&isolation) {
            Ok(isolation)
        } else {
            Err(unsupported(isolation))
        }
    }
}

fn unsupported(isolation: Isolation) -> String {
    format!("this service offers the tiers schema and rls, not '{isolation}'")
}
