//! Shared tables with PostgreSQL Row-Level Security: every tenant table has a
//! `tenant_id` column and a forced policy comparing it with the connection's
//! `app.tenant_id`.
//!
//! Tenants share the pool's connections; a connection serves a tenant once its
//! `search_path` is `"tenancy_data"` and its `app.tenant_id` the tenant's id (both set by
//! the pool in one statement, see `db::pool`). A connection without the setting sees no
//! row and can write none. The application role must not bypass RLS: `check_app_role`
//! refuses superusers, `BYPASSRLS` and table owners.
{%- if isolation == "rls" %}
//!
//! A tenant's rows may be in the shared tables of another server of
//! `TENANCY_DATABASE_SERVERS`, in the database of the same name there
//! (`tenancy.tenants.server` says which): every server has the shared tables, migrated by
//! `migrate`, and the tenants of each server share that server's connections.

mod moving;
{%- endif %}

use diesel::QueryResult;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::servers::{SERVER_KEYS, ServerSettings, Servers, server_name};
use super::{Context, DestroyPlan, Pending, RoleCheck, Route, Strategy};
use crate::db::connect::{PgConn, with_session_option};
use crate::db::migrate::{self, MigrateError, grants_on_schema};
use crate::db::pool::{Home, PoolError, SessionScope, set_tenant_locally};
use crate::db::settings::DatabaseSettings;
use crate::db::tls::PgConfig;
use crate::domain::{Isolation, ServerAddress, SqlIdentifier, Tenant, TenantStatus};
use crate::settings::{ConfigError, Key, Source};

/// The schema of the shared tenant tables.
pub const DATA_SCHEMA: &str = "tenancy_data";
/// Run once, in `tenancy_data`: shared tables, each with its policy.
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant_rls");

pub struct RlsStrategy {
    /// The servers tenants' rows may be on.
    pub servers: Servers,
}

#[derive(diesel::QueryableByName)]
struct TenantTable {
    #[diesel(sql_type = Text)]
    name: String,
}

impl RlsStrategy {
    /// Creates or updates the shared tables on `server` (default: the default server), as
    /// the owner, and grants the application role data access there.
    async fn migrate_on(
        &self,
        ctx: &Context,
        server: Option<&ServerAddress>,
    ) -> Result<Vec<String>, MigrateError> {
        let schema = format!("\"{DATA_SCHEMA}\"");
        let grants = ctx
            .app_role
            .as_ref()
            .map(|role| grants_on_schema(&schema, role))
            .unwrap_or_default();
        let owner = (self.servers.owner_config(ctx, server)).map_err(MigrateError::Migration)?;
        migrate::run_pending(
            &ctx.runtime,
            with_session_option(&owner, "search_path", DATA_SCHEMA),
            TENANT_MIGRATIONS,
            format!("migrate:{DATA_SCHEMA}"),
            vec![format!("CREATE SCHEMA IF NOT EXISTS {schema}")],
            grants,
        )
        .await
    }

    /// The application role's connection to `server`, outside every pool: it deletes and
    /// counts a tenant's rows there as a request would.
    async fn app_on(&self, ctx: &Context, server: &ServerAddress) -> QueryResult<PgConn> {
        let config = (self.servers.app_config(ctx, Some(server))).map_err(super::query_error)?;
        ctx.connect(config)
            .await
            .map_err(|e| super::query_error(format!("{}: {e}", server.as_str())))
    }
}

impl Strategy for RlsStrategy {
    type Settings = ServerSettings;

    const KEYS: &'static [&'static [Key]] = &[SERVER_KEYS];

    fn read_settings(src: &Source) -> Result<ServerSettings, ConfigError> {
        ServerSettings::read(src)
    }

    /// The application role and the owner use the database their URLs name on every
    /// server.
    fn new(settings: &ServerSettings, database: &DatabaseSettings) -> Self {
        Self {
            servers: Servers::new(settings, database, None, None),
        }
    }

    fn route(&self, tenant: &Tenant) -> Result<Route, String> {
        super::ensure(tenant, Isolation::Rls)?;
        let home = match &tenant.server {
            None => Home::Shared,
            Some(server) => Home::Server(self.servers.index(server)?),
        };
        Ok(Route {
            home,
            scope: Some(SessionScope {
                tenant: tenant.id,
                search_path: format!("\"{DATA_SCHEMA}\""),
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

    /// Creates or updates the shared tenant tables, as the owner, and grants the
    /// application role data access (never ownership or DDL): on the default server, then
    /// on each of `TENANCY_DATABASE_SERVERS`. A listed server that fails is logged and left:
    /// `pending` then reports its tenants, and `migrate` tries them again one by one.
    async fn migrate_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        let applied = self.migrate_on(ctx, None).await?;
        for server in self.servers.listed() {
            if let Err(error) = self.migrate_on(ctx, Some(server)).await {
                tracing::warn!(
                    server = server.as_str(),
                    %error,
                    "the shared tenant tables there could not be migrated: its tenants are \
                     reported"
                );
            }
        }
        Ok(applied)
    }

    async fn pending_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        migrate::pending_in_schema(
            &ctx.runtime,
            ctx.owner.clone(),
            &TENANT_MIGRATIONS,
            DATA_SCHEMA,
        )
        .await
    }

    /// A tenant has nothing of its own to migrate: those on the default server lack
    /// nothing once `migrate_shared` ran; those on another server lack what that server's
    /// shared tables lack (one statement per server; a server that does not answer is
    /// said for each of its tenants). A tenant still `provisioning` lacks everything.
    async fn pending(
        &self,
        ctx: &Context,
        tenants: &[Tenant],
    ) -> Result<Vec<Pending>, MigrateError> {
        let every = migrate::versions(&TENANT_MIGRATIONS)?;
        let mut pending: Vec<Pending> = (tenants.iter())
            .map(|t| {
                Ok(if t.status == TenantStatus::Provisioning {
                    every.clone()
                } else {
                    Vec::new()
                })
            })
            .collect();
        for server in self.servers.listed() {
            let on: Vec<usize> = (tenants.iter().enumerate())
                .filter(|(_, t)| t.server.as_ref() == Some(server))
                .map(|(at, _)| at)
                .collect();
            if on.is_empty() {
                continue;
            }
            let owner =
                (self.servers.owner_config(ctx, Some(server))).map_err(MigrateError::Migration)?;
            let lacking =
                migrate::pending_in_schema(&ctx.runtime, owner, &TENANT_MIGRATIONS, DATA_SCHEMA)
                    .await
                    .map_err(|error| format!("{}: {error}", server_name(Some(server))));
            for at in on {
                if lacking.is_err() || pending[at].as_ref().is_ok_and(Vec::is_empty) {
                    pending[at] = lacking.clone();
                }
            }
        }
        Ok(pending)
    }

    /// A new tenant needs no storage of its own: its rows go in the shared tables. On
    /// another server, the owner makes sure they are there (`migrate` does it for a
    /// process without the owner's URL).
    async fn provision(
        &self,
        ctx: &Context,
        _conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<bool, MigrateError> {
        super::ensure(tenant, Isolation::Rls).map_err(MigrateError::Migration)?;
        if tenant.server.is_some() {
            if !ctx.has_owner {
                return Ok(false);
            }
            return self.migrate(ctx, tenant).await.map(|_| true);
        }
        Ok(true)
    }

    /// Nothing of a tenant's own to migrate: on another server, that server's shared
    /// tables are brought up to date.
    async fn migrate(&self, ctx: &Context, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
        super::ensure(tenant, Isolation::Rls).map_err(MigrateError::Migration)?;
        match &tenant.server {
            None => Ok(Vec::new()),
            Some(server) => self.migrate_on(ctx, Some(server)).await,
        }
    }

    /// Deletes the tenant's rows from every tenant table (every table of `tenancy_data`
    /// with a `tenant_id` column), in one transaction, scoped to the tenant as a request
    /// is: its policies let the application role delete those rows and no other. The
    /// explicit `WHERE` matters to a role that RLS does not restrict. On another server, as
    /// the application role there.
    async fn destroy(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<()> {
        super::ensure(tenant, Isolation::Rls).map_err(super::query_error)?;
        let mut there;
        let conn = match &tenant.server {
            None => conn,
            Some(server) => {
                there = self.app_on(ctx, server).await?;
                &mut *there
            }
        };
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            diesel::sql_query(set_tenant_locally(tenant.id))
                .execute(conn)
                .await?;
            let tables: Vec<TenantTable> = diesel::sql_query(
                "SELECT c.relname AS name FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') \
                   AND a.attname = 'tenant_id' AND NOT a.attisdropped \
                 ORDER BY c.relname",
            )
            .bind::<Text, _>(DATA_SCHEMA)
            .load(conn)
            .await?;
            for table in tables {
                let name = SqlIdentifier::parse(&table.name).map_err(super::query_error)?;
                diesel::sql_query(format!(
                    "DELETE FROM \"{DATA_SCHEMA}\".{} WHERE tenant_id = $1",
                    name.quoted()
                ))
                .bind::<SqlUuid, _>(tenant.id)
                .execute(conn)
                .await?;
            }
            Ok(())
        })
        .await
    }

    /// Counts the tenant's rows with `app.tenant_id` set, as `destroy` deletes them: a
    /// forced policy applies to a table's owner too.
    async fn destroy_plan(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<DestroyPlan> {
        super::ensure(tenant, Isolation::Rls).map_err(super::query_error)?;
        let mut there;
        let conn = match &tenant.server {
            None => conn,
            Some(server) => {
                there = self.app_on(ctx, server).await?;
                &mut *there
            }
        };
        let tables = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                diesel::sql_query(set_tenant_locally(tenant.id))
                    .execute(conn)
                    .await?;
                super::tables_with_rows(conn, DATA_SCHEMA, true).await
            })
            .await?;
        Ok(DestroyPlan {
            storage: format!("the tenant's rows in the shared tables of \"{DATA_SCHEMA}\""),
            // The shared tables exist; the tenant may have no row in them yet.
            exists: !tables.is_empty(),
            tables,
        })
    }

    /// Refuses an application role that Row-Level Security would not restrict.
    async fn check_app_role(&self, conn: &mut AsyncPgConnection) -> Result<(), String> {
        RoleCheck::of(
            conn,
            "r.rolsuper OR r.rolbypassrls",
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relowner = r.oid",
            DATA_SCHEMA,
        )
        .await?
        .refuse(
            "is a superuser or has BYPASSRLS, so Row-Level Security would not apply",
            "tenant tables and could disable their Row-Level Security",
        )
    }
}
