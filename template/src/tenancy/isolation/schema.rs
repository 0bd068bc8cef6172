//! Schema per tenant: tenant `acme`'s tables live in schema `tenant_acme`.
//!
//! Tenants share the pool's connections; a connection serves `acme` once its
//! `search_path` is `"tenant_acme"` (set by the pool, see `db::pool`), so every
//! unqualified table name resolves in that tenant's schema and nowhere else. The schema
//! name only ever comes from `SchemaName::for_tenant`.
//!
//! A tenant's schema may be on another server of `TENANCY_DATABASE_SERVERS`, in the
//! database of the same name there (`tenancy.tenants.server` says which): the tenants of
//! each server share that server's connections. The owner creates, migrates and drops
//! schemas there; the provisioning functions serve the default server.

{%- if isolation == "schema" %}
mod moving;

{%- endif %}
use diesel::QueryResult;
use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::servers::{SERVER_KEYS, ServerSettings, Servers, server_name};
use super::{Context, DestroyPlan, Exists, Pending, RoleCheck, Route, Strategy};
use crate::db::CONTROL_SCHEMA;
use crate::db::connect::{PgConn, connect, with_session_option};
use crate::db::migrate::{self, MigrateError, grants_on_schema};
use crate::db::pool::{Home, PoolError, SessionScope};
use crate::db::settings::DatabaseSettings;
use crate::db::tls::PgConfig;
use crate::domain::{Isolation, ServerAddress, Tenant, TenantIdentifier};
use crate::settings::{ConfigError, Key, Source};
use tokio::runtime::Handle;

/// Run once in every tenant's schema, with unqualified table names.
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant_schema");

/// The same migrations' versions and SQL (written by build.rs): `migrate` keeps them in
/// `tenancy.tenant_migrations`, where `tenancy.provision_schema` reads them.
const TENANT_MIGRATION_SQL: &[(&str, &str)] =
    include!(concat!(env!("OUT_DIR"), "/tenant_schema_sql.rs"));

/// This strategy's part of the control plane: the functions through which the
/// application role creates and drops tenant schemas, run as the owner.
pub const CONTROL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/control_schema");

/// Run before a tenant's schema is created: on Citus 12 or later (distributed
/// PostgreSQL) the schema becomes a distributed schema, placed whole on one node; on plain
/// PostgreSQL the setting is an unused placeholder. `tenancy.provision_schema` does the same.
const DISTRIBUTED_SCHEMA: &str =
    "SELECT set_config('citus.enable_schema_based_sharding', 'on', true)";

/// Every tenant schema starts with this, so no tenant can ever name `public` or `tenancy`.
const SCHEMA_PREFIX: &str = "tenant_";

/// The schema of a tenant's tables, `tenant_<identifier>`: safe to interpolate
/// (double-quoted) into DDL, since the identifier is (and leaves room for the prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn for_tenant(identifier: &TenantIdentifier) -> Self {
        Self(format!("{SCHEMA_PREFIX}{identifier}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name double-quoted for DDL: `"tenant_acme"`.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl std::fmt::Display for SchemaName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

pub struct SchemaStrategy {
    /// The owner's connections `migrate` reuses from one tenant to the next.
    sessions: Sessions,
    /// The servers tenants' schemas may be on.
    pub servers: Servers,
}

/// Owner connections kept between the tenants `migrate` changes in one database (schema
/// per tenant), each tenant's `search_path` set for its transaction only: a fleet costs
/// one log-in per worker and server, not one per tenant. Each is kept with its server.
#[derive(Default)]
pub struct Sessions(std::sync::Mutex<Vec<(Option<ServerAddress>, PgConn)>>);

/// Idle connections [`Sessions`] keeps at most.
const KEPT_SESSIONS: usize = 16;

impl Sessions {
    /// [`migrate::run_pending`] on a kept connection to `server` (or a new one, of
    /// `config`), `target`'s `search_path` set for the transaction; the connection is
    /// kept again if all went well.
    pub async fn run_pending(
        &self,
        runtime: &Handle,
        (server, config): (Option<&ServerAddress>, &PgConfig),
        migrations: EmbeddedMigrations,
        target: migrate::Target,
    ) -> Result<Vec<String>, MigrateError> {
        let kept = {
            let mut kept = self.kept();
            let at = kept.iter().position(|(on, _)| on.as_ref() == server);
            at.map(|at| kept.swap_remove(at).1)
                .and_then(|mut conn| (!conn.is_broken()).then_some(conn))
        };
        let conn = match kept {
            Some(conn) => conn,
            None => connect(config.clone(), runtime, None, None).await?,
        };
        let (result, mut conn) = migrate::run_on(runtime, conn, migrations, target).await?;
        let mut kept = self.kept();
        if result.is_ok() && !conn.is_broken() && kept.len() < KEPT_SESSIONS {
            kept.push((server.cloned(), conn));
        }
        result
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<(Option<ServerAddress>, PgConn)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What `tenancy.provision_schema` returns: the versions the tenant's schema has.
#[derive(diesel::QueryableByName)]
struct Provisioned {
    #[diesel(sql_type = Array<Text>)]
    versions: Vec<String>,
}

impl SchemaStrategy {
    /// The owner's connection settings on `tenant`'s server.
    fn owner_of(&self, ctx: &Context, tenant: &Tenant) -> Result<PgConfig, String> {
        self.servers.owner_config(ctx, tenant.server.as_ref())
    }

    /// A connection of the owner to `server`, outside every pool.
    async fn owner_on(&self, ctx: &Context, server: &ServerAddress) -> QueryResult<PgConn> {
        let config = (self.servers.owner_config(ctx, Some(server))).map_err(super::query_error)?;
        ctx.connect(config)
            .await
            .map_err(|e| super::query_error(format!("{}: {e}", server.as_str())))
    }
}

impl Strategy for SchemaStrategy {
    type Settings = ServerSettings;

    const KEYS: &'static [&'static [Key]] = &[SERVER_KEYS];

    fn read_settings(src: &Source) -> Result<ServerSettings, ConfigError> {
        ServerSettings::read(src)
    }

    /// The application role and the owner use the database their URLs name on every
    /// server.
    fn new(settings: &ServerSettings, database: &DatabaseSettings) -> Self {
        Self {
            sessions: Sessions::default(),
            servers: Servers::new(settings, database, None, None),
        }
    }

    fn route(&self, tenant: &Tenant) -> Result<Route, String> {
        super::ensure(tenant, Isolation::Schema)?;
        let home = match &tenant.server {
            None => Home::Shared,
            Some(server) => Home::Server(self.servers.index(server)?),
        };
        Ok(Route {
            home,
            scope: Some(SessionScope {
                tenant: tenant.id,
                search_path: SchemaName::for_tenant(&tenant.identifier).quoted(),
            }),
        })
    }

    async fn connect_config(&self, ctx: &Context, tenant: &Tenant) -> Result<PgConfig, PoolError> {
        match &tenant.server {
            None => Ok(ctx.app.clone()),
            Some(server) => {
                (self.servers.app_config(ctx, Some(server))).map_err(PoolError::Isolation)
            }
        }
    }

    /// Tenants share no table here; the control plane gets the provisioning functions
    /// (executable by the application role alone) and this build's tenant migrations.
    async fn migrate_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        let grants = ctx
            .app_role
            .as_ref()
            .map(|role| {
                ["provision_schema", "drop_tenant_schema"]
                    .map(|function| {
                        format!(
                            "GRANT EXECUTE ON FUNCTION \"{CONTROL_SCHEMA}\".{function}(text) TO {}",
                            role.quoted()
                        )
                    })
                    .to_vec()
            })
            .unwrap_or_default();
        let applied = migrate::run_pending(
            &ctx.runtime,
            with_session_option(&ctx.owner, "search_path", CONTROL_SCHEMA),
            CONTROL_MIGRATIONS,
            "migrate:control_schema".into(),
            Vec::new(),
            grants,
        )
        .await?;
        // A version already there keeps its SQL unless this build's differs; one this
        // build lacks (a newer build's) stays.
        let (versions, sql): (Vec<&str>, Vec<&str>) = TENANT_MIGRATION_SQL.iter().copied().unzip();
        let mut conn = ctx.connect(ctx.owner.clone()).await?;
        diesel::sql_query(
            "INSERT INTO tenancy.tenant_migrations (version, up_sql) \
             SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT (version) DO UPDATE SET up_sql = excluded.up_sql \
             WHERE tenant_migrations.up_sql IS DISTINCT FROM excluded.up_sql",
        )
        .bind::<Array<Text>, _>(versions)
        .bind::<Array<Text>, _>(sql)
        .execute(&mut conn)
        .await?;
        Ok(applied)
    }

    async fn pending_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        migrate::pending_in_schema(
            &ctx.runtime,
            ctx.owner.clone(),
            &CONTROL_MIGRATIONS,
            CONTROL_SCHEMA,
        )
        .await
    }

    /// Reads the tenant schemas' records on each server, 500 to a statement; the tenants
    /// of a server that does not answer are told so.
    async fn pending(
        &self,
        ctx: &Context,
        tenants: &[Tenant],
    ) -> Result<Vec<Pending>, MigrateError> {
        let mut pending = vec![Ok(Vec::new()); tenants.len()];
        let mut servers: Vec<Option<&ServerAddress>> = Vec::new();
        for server in tenants.iter().map(|t| t.server.as_ref()) {
            if !servers.contains(&server) {
                servers.push(server);
            }
        }
        for server in servers {
            let (at, schemas): (Vec<usize>, Vec<String>) = (tenants.iter().enumerate())
                .filter(|(_, t)| t.server.as_ref() == server)
                .map(|(at, t)| (at, SchemaName::for_tenant(&t.identifier).to_string()))
                .unzip();
            let owner =
                (self.servers.owner_config(ctx, server)).map_err(MigrateError::Migration)?;
            match migrate::pending_in(&ctx.runtime, owner, &TENANT_MIGRATIONS, &schemas).await {
                Ok(found) => {
                    for (at, lacking) in at.into_iter().zip(found) {
                        pending[at] = Ok(lacking);
                    }
                }
                Err(error) => {
                    let why = format!("{}: {error}", server_name(server));
                    for at in at {
                        pending[at] = Err(why.clone());
                    }
                }
            }
        }
        Ok(pending)
    }

    /// `tenancy.provision_schema`, as the application role: the schema, created by the
    /// function as its owner, must then have every migration of this build (else the
    /// database holds an older build's, and `migrate` must run first: nothing is kept).
    ///
    /// On another server, where there are no such functions, the owner creates it; a
    /// process without the owner's URL leaves it to `migrate`.
    async fn provision(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<bool, MigrateError> {
        super::ensure(tenant, Isolation::Schema).map_err(MigrateError::Migration)?;
        if tenant.server.is_some() {
            if !ctx.has_owner {
                return Ok(false);
            }
            return self.migrate(ctx, tenant).await.map(|_| true);
        }
        let expected = migrate::versions(&TENANT_MIGRATIONS)?;
        conn.transaction::<_, MigrateError, _>(async |conn| {
            let provisioned: Provisioned =
                diesel::sql_query("SELECT tenancy.provision_schema($1) AS versions")
                    .bind::<Text, _>(tenant.identifier.as_str())
                    .get_result(conn)
                    .await?;
            let missing: Vec<&String> = expected
                .iter()
                .filter(|v| !provisioned.versions.contains(v))
                .collect();
            if missing.is_empty() {
                Ok(true)
            } else {
                Err(MigrateError::Migration(format!(
                    "the database lacks tenant migrations of this build ({}): run `migrate` first",
                    missing
                        .iter()
                        .map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        })
        .await
    }

    /// Creates the tenant's schema if needed, applies its pending migrations as the owner
    /// and grants the application role data access, on a connection to its server kept
    /// between tenants.
    async fn migrate(&self, ctx: &Context, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
        super::ensure(tenant, Isolation::Schema).map_err(MigrateError::Migration)?;
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let grants = ctx
            .app_role
            .as_ref()
            .map(|role| grants_on_schema(&schema.quoted(), role))
            .unwrap_or_default();
        let target = migrate::Target {
            search_path: Some(schema.quoted()),
            lock_name: format!("migrate:{schema}"),
            before: vec![
                DISTRIBUTED_SCHEMA.to_owned(),
                format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted()),
            ],
            after: grants,
        };
        let owner = self
            .owner_of(ctx, tenant)
            .map_err(MigrateError::Migration)?;
        let on = (tenant.server.as_ref(), &owner);
        (self.sessions)
            .run_pending(&ctx.runtime, on, TENANT_MIGRATIONS, target)
            .await
    }

    /// Drops the tenant's schema and everything in it, through
    /// `tenancy.drop_tenant_schema` (as its owner; the tenant must be deleted); on another
    /// server, as the owner.
    async fn destroy(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<()> {
        super::ensure(tenant, Isolation::Schema).map_err(super::query_error)?;
        if let Some(server) = &tenant.server {
            let schema = SchemaName::for_tenant(&tenant.identifier);
            let mut owner = self.owner_on(ctx, server).await?;
            diesel::sql_query(format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted()))
                .execute(&mut *owner)
                .await?;
            return Ok(());
        }
        diesel::sql_query("SELECT tenancy.drop_tenant_schema($1)")
            .bind::<Text, _>(tenant.identifier.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn destroy_plan(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<DestroyPlan> {
        super::ensure(tenant, Isolation::Schema).map_err(super::query_error)?;
        let mut there;
        let conn = match &tenant.server {
            None => conn,
            Some(server) => {
                there = self.owner_on(ctx, server).await?;
                &mut *there
            }
        };
        let schema = SchemaName::for_tenant(&tenant.identifier);
        let exists: Exists = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS exists",
        )
        .bind::<diesel::sql_types::Text, _>(schema.as_str())
        .get_result(conn)
        .await?;
        Ok(DestroyPlan {
            storage: format!("schema {} and everything in it", schema.quoted()),
            exists: exists.exists,
            tables: super::tables_with_rows(conn, schema.as_str(), false).await?,
        })
    }

    /// Any role that can read its tenants' schemas will do.
    /// Tenants share one role here, and only `search_path` keeps a connection in its
    /// schema: a superuser could reach (and an owner alter) any tenant's tables.
    async fn check_app_role(&self, conn: &mut AsyncPgConnection) -> Result<(), String> {
        RoleCheck::of(
            conn,
            "r.rolsuper",
            "SELECT count(*) FROM pg_namespace n \
             WHERE starts_with(n.nspname, $1) AND n.nspowner = r.oid",
            SCHEMA_PREFIX,
        )
        .await?
        .refuse(
            "is a superuser and could reach every tenant's schema",
            "tenant schemas and could alter or drop them",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SqlIdentifier;
    use proptest::prelude::*;

    #[test]
    fn the_longest_identifier_gives_a_63_byte_schema() {
        let longest = TenantIdentifier::parse(&"z".repeat(TenantIdentifier::MAX_LEN)).unwrap();
        assert_eq!(SchemaName::for_tenant(&longest).as_str().len(), 63);
    }

    #[test]
    fn schema_names_are_quoted() {
        let id = TenantIdentifier::parse("acme").unwrap();
        assert_eq!(SchemaName::for_tenant(&id).quoted(), "\"tenant_acme\"");
    }

    proptest! {
        #[test]
        fn whatever_parses_is_safe_to_quote(input in "\\PC{0,80}") {
            if let Ok(id) = TenantIdentifier::parse(&input) {
                let schema = SchemaName::for_tenant(&id);
                prop_assert!(SqlIdentifier::parse(schema.as_str()).is_ok());
            }
        }
    }
}
