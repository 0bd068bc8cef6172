//! One database per tenant: tenant `acme`'s tables live in database `tenant_acme`
//! (`TENANCY_TENANT_DATABASE_PREFIX` + identifier), on the server of
//! `TENANCY_DATABASE_URL_TEMPLATE` (default: the server of `TENANCY_DATABASE_URL`).
//!
//! A tenant connection is a connection to the tenant's database: nothing else can be
//! reached on it, and it serves that tenant only. All tenants' connections together stay
//! under `TENANCY_MAX_TOTAL_CONNECTIONS`; when the cap is reached, the least recently used
//! idle connection of another tenant is closed to make room (see `db::pool`). Where each tenant's database lives
//! is recorded in `tenancy.tenant_databases`: its name, and its server when a tenant was
//! placed on another PostgreSQL server (`tenant create --server`, the admin API's
//! `server` field).

mod moving;
{%- if isolation == "hybrid" %}
mod tiers;
{%- endif %}

use diesel::sql_types::{Nullable, Text, Uuid as SqlUuid};
use diesel::{OptionalExtension, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use secrecy::{ExposeSecret, SecretString};

use super::moving::quote_literal;
use super::servers::{AppUrl, SERVER_KEYS, ServerSettings, Servers, server_name};
use super::{Context, DestroyPlan, Exists, Pending, RoleCheck, Route, Strategy};
use crate::db::CONTROL_SCHEMA;
use crate::db::connect::{with_session_option, with_statement_timeout};
use crate::db::migrate::{self, MigrateError, grants_on_schema};
use crate::db::pool::{Home, PoolError};
use crate::db::settings::{DatabaseSettings, check_postgres_url};
use crate::db::tls::PgConfig;
use crate::domain::{Isolation, ServerAddress, SqlIdentifier, Tenant, TenantIdentifier};
use crate::settings::{ConfigError, Key, Source};

/// Run in every tenant's database (schema `public`), with unqualified table names.
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant_database");
/// The strategy's own control-plane table, `tenancy.tenant_databases`.
pub const CONTROL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/control_database");

/// A short prefix (at most 7 bytes, like `tenant_`) that names a tenant's database when
/// put before its identifier: the result always fits PostgreSQL's 63 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifierPrefix(String);

impl IdentifierPrefix {
    /// What tenant identifiers leave for a prefix within 63 bytes.
    pub const MAX_LEN: usize = 63 - TenantIdentifier::MAX_LEN;

    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(format!("a prefix has 1 to {} bytes", Self::MAX_LEN));
        }
        let checked = SqlIdentifier::parse(value).map_err(|why| format!("a prefix: {why}"))?;
        Ok(Self(checked.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<prefix><identifier>`, a safe identifier by construction.
    pub fn name(&self, identifier: &TenantIdentifier) -> SqlIdentifier {
        SqlIdentifier::prefixed(&self.0, identifier)
    }
}

/// Where a tenant's database is: its name, and its server when not the default one.
#[derive(diesel::QueryableByName)]
struct Placement {
    #[diesel(sql_type = Text)]
    database_name: String,
    #[diesel(sql_type = Nullable<Text>)]
    server: Option<String>,
}

impl Placement {
    fn database(&self) -> Result<SqlIdentifier, String> {
        SqlIdentifier::parse(&self.database_name)
    }

    fn server(&self) -> Result<Option<ServerAddress>, String> {
        self.server.as_deref().map(ServerAddress::parse).transpose()
    }
{%- if isolation == "hybrid" %}

    /// The database's name and server (for hybrid's changes of tier).
    fn location(&self) -> Result<(SqlIdentifier, Option<ServerAddress>), super::PlaceError> {
        Ok((
            self.database().map_err(super::PlaceError::Invalid)?,
            self.server().map_err(super::PlaceError::Invalid)?,
        ))
    }
{%- endif %}
}

async fn placement(
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
) -> QueryResult<Option<Placement>> {
    diesel::sql_query(
        "SELECT database_name, server FROM tenancy.tenant_databases WHERE tenant_id = $1",
    )
    .bind::<SqlUuid, _>(tenant.id)
    .get_result(conn)
    .await
    .optional()
}

pub struct DatabaseStrategy {
    /// Tenant `acme`'s database is `<prefix>acme`.
    prefix: IdentifierPrefix,
    /// The servers tenants' databases may be on, and how each role reaches them.
    pub servers: Servers,
}

impl DatabaseStrategy {
    /// The name of `tenant`'s database.
    pub fn database_name(&self, tenant: &Tenant) -> SqlIdentifier {
        self.prefix.name(&tenant.identifier)
    }

    /// Where `tenant`'s database is (its record's name and server; without a record, the
    /// name derived from its identifier on the default server), for `destroy` and its plan.
    async fn located(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<(SqlIdentifier, Option<ServerAddress>)> {
        let invalid = super::query_error;
        super::ensure(tenant, Isolation::Database).map_err(invalid)?;
        Ok(match placement(conn, tenant).await? {
            Some(recorded) => (
                recorded.database().map_err(invalid)?,
                recorded.server().map_err(invalid)?,
            ),
            None => (self.database_name(tenant), None),
        })
    }

    /// Records that `tenant`'s database is to live on `server` (`None`: the default
    /// server), before anything is created there, unless a record says where it is; returns
    /// the record.
    async fn record(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
        server: Option<&ServerAddress>,
    ) -> QueryResult<Placement> {
        if let Some(recorded) = placement(conn, tenant).await? {
            return Ok(recorded);
        }
        diesel::sql_query(
            "INSERT INTO tenancy.tenant_databases (tenant_id, database_name, server) \
             VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind::<SqlUuid, _>(tenant.id)
        .bind::<Text, _>(self.database_name(tenant).as_str())
        .bind::<Nullable<Text>, _>(server.map(ServerAddress::as_str))
        .execute(conn)
        .await?;
        placement(conn, tenant)
            .await?
            .ok_or(diesel::result::Error::NotFound)
    }

    /// Creates database `name` on `server` if it is not there (as the owner), lets the
    /// application role connect to it (and nobody else), marks it with `comment` when
    /// given (what a resumed move checks before it drops a copy of its own), then applies
    /// the tenant migrations inside it.
    async fn create_database(
        &self,
        ctx: &Context,
        name: &SqlIdentifier,
        server: Option<&ServerAddress>,
        comment: Option<&str>,
    ) -> Result<Vec<String>, MigrateError> {
        let owner = (self.servers.owner_config(ctx, server)).map_err(MigrateError::Migration)?;
        let mut conn = ctx.connect(owner.clone()).await?;
        let found: Exists = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists",
        )
        .bind::<Text, _>(name.as_str())
        .get_result(&mut conn)
        .await?;
        if found.exists && comment.is_some() {
            return Err(MigrateError::Migration(format!(
                "{} already has a database {}: it is not this move's copy",
                server_name(server),
                name.quoted()
            )));
        }
        if !found.exists {
            // CREATE DATABASE cannot run in a transaction; a concurrent provisioning of the
            // same tenant may win the race, which is fine.
            let created = diesel::sql_query(format!("CREATE DATABASE {}", name.quoted()))
                .execute(&mut conn)
                .await;
            match created {
                Err(error) if !error.to_string().contains("already exists") => {
                    return Err(error.into());
                }
                _ => {}
            }
        }
        if let Some(comment) = comment {
            diesel::sql_query("SELECT set_config('tenancy.comment', $1, false)")
                .bind::<Text, _>(comment)
                .execute(&mut conn)
                .await?;
            // COMMENT takes no bind parameter: the marker is read back from the setting.
            diesel::sql_query(format!(
                "DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE %I IS %L', {}, \
                 current_setting('tenancy.comment')); END $$",
                quote_literal(name.as_str())
            ))
            .execute(&mut conn)
            .await?;
        }
        diesel::sql_query(format!(
            "REVOKE ALL ON DATABASE {} FROM PUBLIC",
            name.quoted()
        ))
        .execute(&mut conn)
        .await?;
        if let Some(role) = &ctx.app_role {
            diesel::sql_query(format!(
                "GRANT CONNECT ON DATABASE {} TO {}",
                name.quoted(),
                role.quoted()
            ))
            .execute(&mut conn)
            .await?;
        }
        drop(conn);

        let mut inside = owner;
        inside.dbname(name.as_str());
        let grants = ctx
            .app_role
            .as_ref()
            .map(|role| grants_on_schema("public", role))
            .unwrap_or_default();
        migrate::run_pending(
            &ctx.runtime,
            with_session_option(&inside, "search_path", "public"),
            TENANT_MIGRATIONS,
            format!("migrate:{}", name.as_str()),
            Vec::new(),
            grants,
        )
        .await
    }
}

/// What the database strategy reads from the configuration.
#[derive(Debug, Clone)]
pub struct TenantDatabaseSettings {
    /// Tenant `acme`'s database is `<prefix>acme` (`TENANCY_TENANT_DATABASE_PREFIX`).
    pub prefix: IdentifierPrefix,
    /// The application role's URL of a tenant database, `{database}` standing for its
    /// name (`TENANCY_DATABASE_URL_TEMPLATE`); default: `TENANCY_DATABASE_URL` with its
    /// database name replaced.
    pub url_template: Option<SecretString>,
    /// The servers tenants' databases may be on.
    pub servers: ServerSettings,
}

/// The keys of [`TenantDatabaseSettings`].
pub(super) const DATABASE_KEYS: &[Key] = &[
    ("tenant_database_prefix", Some("tenant_")),
    ("database_url_template", None),
];

impl Strategy for DatabaseStrategy {
    type Settings = TenantDatabaseSettings;

    const KEYS: &'static [&'static [Key]] = &[DATABASE_KEYS, SERVER_KEYS];

    fn read_settings(src: &Source) -> Result<TenantDatabaseSettings, ConfigError> {
        let prefix = IdentifierPrefix::parse(&src.get("tenant_database_prefix"))
            .map_err(|why| ConfigError::invalid("tenant_database_prefix", why))?;
        let url_template = match src.optional("database_url_template") {
            Some(template) => {
                if !template.contains("{database}") {
                    return Err(ConfigError::invalid(
                        "database_url_template",
                        "must contain {database}, e.g. postgres://app@db:5432/{database}",
                    ));
                }
                let sample = template.replace("{database}", "tenant_sample");
                check_postgres_url("database_url_template", &sample)?;
                Some(SecretString::from(template))
            }
            None => None,
        };
        let servers = ServerSettings::read(src)?;
        Ok(TenantDatabaseSettings {
            prefix,
            url_template,
            servers,
        })
    }

    fn new(settings: &TenantDatabaseSettings, database: &DatabaseSettings) -> Self {
        // The template was checked at start-up; `{database}` stands in the database position.
        let app_url = settings.url_template.as_ref().map(|template| AppUrl {
            url: template
                .expose_secret()
                .replace("{database}", "postgres")
                .into(),
            variable: "TENANCY_DATABASE_URL_TEMPLATE",
        });
        Self {
            prefix: settings.prefix.clone(),
            servers: Servers::new(&settings.servers, database, app_url, Some("postgres")),
        }
    }

    fn route(&self, tenant: &Tenant) -> Result<Route, String> {
        super::ensure(tenant, Isolation::Database)?;
        Ok(Route {
            home: Home::Tenant(tenant.id),
            scope: None,
        })
    }

    /// The application role's connection settings for `tenant`'s database, on the server
    /// its record names (read when a connection is opened, never per request).
    async fn connect_config(&self, ctx: &Context, tenant: &Tenant) -> Result<PgConfig, PoolError> {
        let refused = |why: String| PoolError::Isolation(why);
        super::ensure(tenant, Isolation::Database).map_err(refused)?;
        let recorded = {
            let mut conn = ctx.control.get().await?;
            placement(&mut conn, tenant).await?
        };
        let (name, server) = match recorded {
            Some(p) => (p.database().map_err(refused)?, p.server().map_err(refused)?),
            None => (self.database_name(tenant), None),
        };
        let mut config = self
            .servers
            .app_config(ctx, server.as_ref())
            .map_err(refused)?;
        config.dbname(name.as_str());
        // The tenant's own statement timeout comes after the setting's: the later wins.
        if let Some(timeout) = tenant.limits.statement_timeout {
            let timeout = std::time::Duration::from_secs(timeout.get().into());
            config = with_statement_timeout(&config, timeout);
        }
        Ok(with_session_option(&config, "search_path", "public"))
    }

    /// Creates `tenancy.tenant_databases`; the application role may only read it (to open
    /// a tenant's connections on the right server).
    async fn migrate_shared(&self, ctx: &Context) -> Result<Vec<String>, MigrateError> {
        let grants = ctx
            .app_role
            .as_ref()
            .map(|role| {
                vec![format!(
                    "GRANT SELECT ON \"{CONTROL_SCHEMA}\".tenant_databases TO {}",
                    role.quoted()
                )]
            })
            .unwrap_or_default();
        migrate::run_pending(
            &ctx.runtime,
            with_session_option(&ctx.owner, "search_path", CONTROL_SCHEMA),
            CONTROL_MIGRATIONS,
            "migrate:control_database".into(),
            Vec::new(),
            grants,
        )
        .await
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

    /// A database's record can only be read inside it: one connection per tenant database,
    /// a few at a time. A tenant without a database (or a record of one) lacks everything;
    /// one whose server does not answer is told so.
    async fn pending(
        &self,
        ctx: &Context,
        tenants: &[Tenant],
    ) -> Result<Vec<Pending>, MigrateError> {
        use futures_util::StreamExt;

        let mut placements = Vec::with_capacity(tenants.len());
        {
            let mut control = ctx.connect(ctx.owner.clone()).await?;
            for tenant in tenants {
                placements.push(placement(&mut control, tenant).await?);
            }
        }
        let every = migrate::versions(&TENANT_MIGRATIONS)?;
        Ok(futures_util::stream::iter(placements)
            .map(|placed| {
                let every = &every;
                async move {
                    let Some(placed) = placed else {
                        return Ok(every.clone());
                    };
                    let name = placed.database()?;
                    let server = placed.server()?;
                    let mut inside = self.servers.owner_config(ctx, server.as_ref())?;
                    inside.dbname(name.as_str());
                    match migrate::pending_in_schema(
                        &ctx.runtime,
                        inside,
                        &TENANT_MIGRATIONS,
                        "public",
                    )
                    .await
                    {
                        Ok(pending) => Ok(pending),
                        Err(MigrateError::Connect(error))
                            if error.to_string().contains("does not exist") =>
                        {
                            Ok(every.clone())
                        }
                        Err(error) => Err(format!("{}: {error}", server_name(server.as_ref()))),
                    }
                }
            })
            .buffered(4)
            .collect()
            .await)
    }

    /// Creating a database takes the owner's rights: with the owner's URL, as `migrate`
    /// does; without it (`serve` holding the application role's alone), the tenant stays
    /// `provisioning` until `migrate` (or `tenant create`) completes it.
    async fn provision(
        &self,
        ctx: &Context,
        _conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<bool, MigrateError> {
        if !ctx.has_owner {
            super::ensure(tenant, Isolation::Database).map_err(MigrateError::Migration)?;
            return Ok(false);
        }
        self.migrate(ctx, tenant).await.map(|_| true)
    }

    /// Creates the tenant's database if needed (as the owner, on the server its record
    /// names; a tenant without a record gets one for the server it was registered with),
    /// lets the application role connect to it (and nobody else), then applies the tenant
    /// migrations inside it.
    async fn migrate(&self, ctx: &Context, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
        super::ensure(tenant, Isolation::Database).map_err(MigrateError::Migration)?;
        let recorded = {
            let mut control = ctx.connect(ctx.owner.clone()).await?;
            self.record(&mut control, tenant, tenant.server.as_ref())
                .await?
        };
        let name = recorded.database().map_err(MigrateError::Migration)?;
        let server = recorded.server().map_err(MigrateError::Migration)?;
        self.create_database(ctx, &name, server.as_ref(), None)
            .await
    }

    /// Terminates the tenant's connections and drops its database, as the owner, on the
    /// server its record names; then deletes the record (as the owner: the application
    /// role may only read it).
    async fn destroy(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<()> {
        let invalid = super::query_error;
        let (name, server) = self.located(conn, tenant).await?;
        let drop_database = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", name.quoted());
        let owner = self
            .servers
            .owner_config(ctx, server.as_ref())
            .map_err(invalid)?;
        let where_ = server_name(server.as_ref());
        let mut there = ctx
            .connect(owner)
            .await
            .map_err(|e| invalid(format!("{where_}: {e}")))?;
        diesel::sql_query(drop_database).execute(&mut there).await?;
        let mut control = ctx
            .connect(ctx.owner.clone())
            .await
            .map_err(|e| invalid(e.to_string()))?;
        diesel::sql_query("DELETE FROM tenancy.tenant_databases WHERE tenant_id = $1")
            .bind::<SqlUuid, _>(tenant.id)
            .execute(&mut control)
            .await?;
        Ok(())
    }

    /// Reads the tables inside the tenant's database, as the owner, on its server.
    async fn destroy_plan(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> QueryResult<DestroyPlan> {
        let invalid = super::query_error;
        let (name, server) = self.located(conn, tenant).await?;
        let storage = format!(
            "database {} on {} and everything in it",
            name.quoted(),
            server_name(server.as_ref())
        );
        let mut inside = self
            .servers
            .owner_config(ctx, server.as_ref())
            .map_err(invalid)?;
        inside.dbname(name.as_str());
        let (exists, tables) = match ctx.connect(inside).await {
            Ok(mut there) => (
                true,
                super::tables_with_rows(&mut there, "public", false).await?,
            ),
            Err(error) if error.to_string().contains("does not exist") => (false, Vec::new()),
            Err(error) => return Err(invalid(error.to_string())),
        };
        Ok(DestroyPlan {
            storage,
            exists,
            tables,
        })
    }

    /// Any role that can connect to the tenant databases will do.
    /// A superuser could connect to (and an owner drop or alter) any tenant's database.
    async fn check_app_role(&self, conn: &mut AsyncPgConnection) -> Result<(), String> {
        RoleCheck::of(
            conn,
            "r.rolsuper",
            "SELECT count(*) FROM pg_database d \
             WHERE starts_with(d.datname, $1) AND d.datdba = r.oid",
            self.prefix.as_str(),
        )
        .await?
        .refuse(
            "is a superuser and could connect to every tenant's database",
            "tenant databases and could alter or drop them",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_names_fit_in_63_bytes() {
        let prefix = IdentifierPrefix::parse("tenant_").unwrap();
        let longest = TenantIdentifier::parse(&"z".repeat(TenantIdentifier::MAX_LEN)).unwrap();
        let name = prefix.name(&longest);
        assert_eq!(name.as_str().len(), 63);
        assert!(SqlIdentifier::parse(name.as_str()).is_ok());
        for bad in ["", "tenants_", "T_", "1_", "a-"] {
            assert!(IdentifierPrefix::parse(bad).is_err(), "{bad:?}");
        }
    }
}
