//! One database per tenant: tenant `acme`'s tables live in database `tenant_acme`
//! (`TENANCY_TENANT_DATABASE_PREFIX` + identifier), on the server of
//! `TENANCY_DATABASE_URL_TEMPLATE` (default: the server of `TENANCY_DATABASE_URL`).
//!
//! A tenant connection is a connection to the tenant's database: nothing else can be
//! reached on it. Each tenant has its own small pool; all of them together stay under
//! `TENANCY_MAX_TOTAL_CONNECTIONS` (see `db::pools`). Where each tenant's database lives
//! is recorded in `tenancy.tenant_databases`: its name, and its server when a tenant was
//! placed on another PostgreSQL server (`tenant create --server`, the admin API's
//! `server` field).

use std::str::FromStr;

use diesel::sql_types::{Bool, Nullable, Text, Uuid as SqlUuid};
use diesel::{OptionalExtension, QueryResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use secrecy::ExposeSecret;

use super::Refused;
use crate::db::manager::{ConnectTarget, connect};
use crate::db::migrate::{self, MigrateError, grants_on_schema};
use crate::db::runtime;
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::lifecycle::LifecycleError;
use crate::tenancy::{CONTROL_SCHEMA, Tenancy, with_session_option};

/// Run in every tenant's database (schema `public`), with unqualified table names.
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/tenant_database");
/// The strategy's own control-plane table, `tenancy.tenant_databases`.
pub const CONTROL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/control_database");

/// Where a tenant's database lives when it is not on the default server: `host` or
/// `host:port` of another PostgreSQL server. Never credentials: the application role and
/// the owner log in there with the user and password of `TENANCY_DATABASE_URL_TEMPLATE`
/// (or `TENANCY_DATABASE_URL`) and `TENANCY_MIGRATION_DATABASE_URL`, so the registry
/// holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerAddress(String);

impl ServerAddress {
    pub fn parse(input: &str) -> Result<Self, String> {
        let address = input.to_ascii_lowercase();
        let bad = || {
            format!(
                "'{input}' is not a server address: expected host or host:port, e.g. db2.internal:5432"
            )
        };
        let (host, port) = match address.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']').ok_or_else(bad)?;
                host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
                };
                (host, port)
            }
            None => match address.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address.as_str(), None),
            },
        };
        if let Some(port) = port {
            port.parse::<std::num::NonZeroU16>().map_err(|_| bad())?;
        }
        let label_ok = |label: &str| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !address.starts_with('[') && (host.len() > 253 || !host.split('.').all(label_ok)) {
            return Err(bad());
        }
        Ok(Self(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `url` (a `postgres://` URL) pointing at this server instead of its own host and port.
    fn apply_to(&self, url: &str, variable: &str) -> Result<tokio_postgres::Config, String> {
        let no_url =
            || format!("{variable} must be a postgres:// URL to place tenants on other servers");
        let (scheme, rest) = url.split_once("://").ok_or_else(no_url)?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let credentials = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"));
        let moved = format!(
            "{scheme}://{}{}{tail}",
            credentials.unwrap_or_default(),
            self.0
        );
        tokio_postgres::Config::from_str(&moved).map_err(|e| format!("{variable}: {e}"))
    }
}

impl TryFrom<String> for ServerAddress {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<ServerAddress> for String {
    fn from(server: ServerAddress) -> String {
        server.0
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

/// The name of `tenant`'s database.
pub fn database_name(tenancy: &Tenancy, tenant: &Tenant) -> SqlIdentifier {
    tenancy
        .settings
        .tenant_database_prefix
        .name(&tenant.identifier)
}

/// The application role's connection settings on `server` (default: the server of
/// `TENANCY_DATABASE_URL_TEMPLATE`, else of `TENANCY_DATABASE_URL`), database `postgres`.
fn app_config(
    tenancy: &Tenancy,
    server: Option<&ServerAddress>,
) -> Result<tokio_postgres::Config, String> {
    let template = tenancy.settings.database_url_template.as_ref();
    // The template was checked at start-up; `{database}` stands in the database position.
    let url = template.map(|t| t.expose_secret().replace("{database}", "postgres"));
    let mut config = match (server, url) {
        (None, Some(url)) => tokio_postgres::Config::from_str(&url).map_err(|e| e.to_string())?,
        (None, None) => tenancy.base_config().clone(),
        (Some(server), Some(url)) => server.apply_to(&url, "TENANCY_DATABASE_URL_TEMPLATE")?,
        (Some(server), None) => server.apply_to(
            tenancy.settings.database_url.expose_secret(),
            "TENANCY_DATABASE_URL",
        )?,
    };
    if config.get_application_name().is_none() {
        config.application_name(env!("CARGO_PKG_NAME"));
    }
    Ok(config)
}

/// The owner's connection settings on `server`: the migration URL itself for the default
/// server; on another server, its database `postgres`.
fn owner_config(
    tenancy: &Tenancy,
    server: Option<&ServerAddress>,
) -> Result<tokio_postgres::Config, String> {
    let Some(server) = server else {
        return Ok(tenancy.migration_config().clone());
    };
    let url = match &tenancy.settings.migration_database_url {
        Some(url) => url.expose_secret(),
        None => tenancy.settings.database_url.expose_secret(),
    };
    let mut config = server.apply_to(url, "TENANCY_MIGRATION_DATABASE_URL")?;
    config.dbname("postgres");
    Ok(config)
}

/// The application role's connection settings for `tenant`'s database, on the server its
/// record names (read from the registry once per pool, not per request).
pub async fn connect_target(tenancy: &Tenancy, tenant: &Tenant) -> Result<ConnectTarget, Refused> {
    super::ensure(tenant, Isolation::Database).map_err(super::refused)?;
    let recorded = {
        let mut conn = tenancy.control.get().await?;
        placement(&mut conn, tenant).await.map_err(|e| {
            super::refused(format!(
                "cannot read where tenant '{}' lives: {e}",
                tenant.identifier
            ))
        })?
    };
    let (name, server) = match recorded {
        Some(p) => (
            p.database().map_err(super::refused)?,
            p.server().map_err(super::refused)?,
        ),
        None => (database_name(tenancy, tenant), None),
    };
    let mut config = app_config(tenancy, server.as_ref()).map_err(super::refused)?;
    config.dbname(name.as_str());
    Ok(with_session_option(&config, "search_path", "public").into())
}

/// Records that `tenant`'s database is to live on `server` (default: the default server),
/// before anything is created there. Repeating it with the same server (or none, which
/// keeps the recorded one) is fine; asking for another server is a conflict.
pub async fn place(
    tenancy: &Tenancy,
    tenant: &Tenant,
    server: Option<&ServerAddress>,
) -> Result<(), LifecycleError> {
    let runtime = runtime::handle().map_err(|e| MigrateError::Runtime(e.to_string()))?;
    let mut conn = connect(tenancy.migration_config().clone(), &runtime).await?;
    let recorded = record(tenancy, &mut conn, tenant, server).await?;
    match (server, recorded.server()) {
        (Some(wanted), Ok(Some(actual))) if *wanted == actual => Ok(()),
        (Some(wanted), Ok(actual)) => Err(LifecycleError::Conflict(format!(
            "tenant '{}' is already placed on {}, not {}",
            tenant.identifier,
            actual
                .as_ref()
                .map_or("the default server", ServerAddress::as_str),
            wanted.as_str()
        ))),
        (_, Err(why)) => Err(LifecycleError::Invalid(why)),
        (None, Ok(_)) => Ok(()),
    }
}

/// Writes the tenant's record unless there is one, and returns the record.
async fn record(
    tenancy: &Tenancy,
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
    server: Option<&ServerAddress>,
) -> QueryResult<Placement> {
    diesel::sql_query(
        "INSERT INTO tenancy.tenant_databases (tenant_id, database_name, server) \
         VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind::<SqlUuid, _>(tenant.id)
    .bind::<Text, _>(database_name(tenancy, tenant).as_str())
    .bind::<Nullable<Text>, _>(server.map(ServerAddress::as_str))
    .execute(conn)
    .await?;
    placement(conn, tenant)
        .await?
        .ok_or(diesel::result::Error::NotFound)
}

/// Creates `tenancy.tenant_databases`; the application role may only read it (to open a
/// tenant's pool on the right server).
pub async fn migrate_shared(tenancy: &Tenancy) -> Result<Vec<String>, MigrateError> {
    let grants = tenancy
        .app_role()
        .map(|role| {
            vec![format!(
                "GRANT SELECT ON \"{CONTROL_SCHEMA}\".tenant_databases TO {}",
                role.quoted()
            )]
        })
        .unwrap_or_default();
    migrate::run_pending(
        with_session_option(tenancy.migration_config(), "search_path", CONTROL_SCHEMA),
        CONTROL_MIGRATIONS,
        "migrate:control_database".into(),
        Vec::new(),
        grants,
    )
    .await
}

#[derive(diesel::QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// Creates the tenant's database if needed (as the owner, on the server its record names;
/// a tenant without a record gets one for the default server), lets the application role
/// connect to it (and nobody else), then applies the tenant migrations inside it. Safe to
/// repeat: this is how an interrupted provisioning completes.
pub async fn migrate(tenancy: &Tenancy, tenant: &Tenant) -> Result<Vec<String>, MigrateError> {
    super::ensure(tenant, Isolation::Database).map_err(MigrateError::Migration)?;
    let runtime = runtime::handle().map_err(|e| MigrateError::Runtime(e.to_string()))?;
    let recorded = {
        let mut control = connect(tenancy.migration_config().clone(), &runtime).await?;
        record(tenancy, &mut control, tenant, None).await?
    };
    let name = recorded.database().map_err(MigrateError::Migration)?;
    let server = recorded.server().map_err(MigrateError::Migration)?;
    let owner = owner_config(tenancy, server.as_ref()).map_err(MigrateError::Migration)?;

    let mut conn = connect(owner.clone(), &runtime).await?;
    let found: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(name.as_str())
            .get_result(&mut conn)
            .await?;
    if !found.exists {
        // CREATE DATABASE cannot run in a transaction; a concurrent provisioning of the
        // same tenant may win the race, which is fine.
        let created = diesel::sql_query(format!("CREATE DATABASE {}", name.quoted()))
            .execute(&mut conn)
            .await;
        match created {
            Err(error) if !error.to_string().contains("already exists") => return Err(error.into()),
            _ => {}
        }
    }
    diesel::sql_query(format!(
        "REVOKE ALL ON DATABASE {} FROM PUBLIC",
        name.quoted()
    ))
    .execute(&mut conn)
    .await?;
    if let Some(role) = tenancy.app_role() {
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
    let grants = tenancy
        .app_role()
        .map(|role| grants_on_schema("public", role))
        .unwrap_or_default();
    migrate::run_pending(
        with_session_option(&inside, "search_path", "public"),
        TENANT_MIGRATIONS,
        format!("migrate:{}", name.as_str()),
        Vec::new(),
        grants,
    )
    .await
}

/// Terminates the tenant's connections and drops its database, as the owner, on the
/// server its record names (`conn` is the owner's connection to the control database);
/// then deletes the record.
pub async fn destroy(
    tenancy: &Tenancy,
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
) -> QueryResult<()> {
    let invalid = |why: String| diesel::result::Error::QueryBuilderError(why.into());
    super::ensure(tenant, Isolation::Database).map_err(invalid)?;
    let (name, server) = match placement(conn, tenant).await? {
        Some(recorded) => (
            recorded.database().map_err(invalid)?,
            recorded.server().map_err(invalid)?,
        ),
        None => (database_name(tenancy, tenant), None),
    };
    let drop_database = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", name.quoted());
    match server {
        None => {
            diesel::sql_query(drop_database).execute(conn).await?;
        }
        Some(server) => {
            let owner = owner_config(tenancy, Some(&server)).map_err(invalid)?;
            let runtime = runtime::handle().map_err(|e| invalid(e.to_string()))?;
            let mut there = connect(owner, &runtime)
                .await
                .map_err(|e| invalid(format!("{}: {e}", server.as_str())))?;
            diesel::sql_query(drop_database).execute(&mut there).await?;
        }
    }
    diesel::sql_query("DELETE FROM tenancy.tenant_databases WHERE tenant_id = $1")
        .bind::<SqlUuid, _>(tenant.id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Any role that can connect to the tenant databases will do.
pub async fn check_app_role(_conn: &mut AsyncPgConnection) -> Result<(), String> {
    Ok(())
}

/// The isolation of a new tenant: this strategy's; asking for another is an error.
pub fn choose(_tenancy: &Tenancy, requested: Option<Isolation>) -> Result<Isolation, String> {
    super::only(requested, Isolation::Database)
}
