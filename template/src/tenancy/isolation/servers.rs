//! The PostgreSQL servers tenants may be placed on besides the default one
//! (`TENANCY_DATABASE_SERVERS`): how each role reaches them, which one a new tenant goes
//! to (`TENANCY_DATABASE_PLACEMENT`), and whether each answers (`/health`, `/metrics`).
//!
//! The registry records a tenant's server as `host[:port]` (`tenancy.tenants.server`),
//! never credentials: the application role and the owner log in there with the user and
//! password of their own URLs.

use diesel::QueryResult;
use diesel::sql_types::{BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::Context;
use crate::db::connect::with_statement_timeout;
use crate::db::settings::{DatabaseSettings, OWNER_CONNECT_TIMEOUT, Pooler};
use crate::db::tls::PgConfig;
use crate::domain::ServerAddress;
use crate::settings::{ConfigError, Key, Source};
use crate::tenancy::registry;

/// The keys of [`ServerSettings`].
pub(super) const SERVER_KEYS: &[Key] = &[
    ("database_servers", None),
    ("database_server_poolers", None),
    ("database_placement", Some("fewest")),
];

/// Where tenants may be placed, as the configuration says.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// The other servers a tenant may be placed on (`TENANCY_DATABASE_SERVERS`, a
    /// comma-separated list of host[:port]); empty: none, every tenant is on the default
    /// server.
    pub servers: Vec<ServerAddress>,
    /// The pooler in front of a listed server (`TENANCY_DATABASE_SERVER_POOLERS`,
    /// comma-separated `server=pooler` pairs of host[:port]): the application role reaches
    /// that server through it, the owner (migrations, moves) always directly. A listed
    /// server without one is reached directly.
    pub poolers: Vec<(ServerAddress, ServerAddress)>,
    /// Where a tenant that asks for no server goes (`TENANCY_DATABASE_PLACEMENT`:
    /// `fewest`, the default, or `default`: the default server).
    pub placement: PlacementPolicy,
}

impl ServerSettings {
    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let servers = src
            .optional("database_servers")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(ServerAddress::parse)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|why| ConfigError::invalid("database_servers", why))?
            .unwrap_or_default();
        let poolers = src
            .optional("database_server_poolers")
            .map(|list| parse_poolers(&list, &servers))
            .transpose()
            .map_err(|why| ConfigError::invalid("database_server_poolers", why))?
            .unwrap_or_default();
        let placement = match src.get("database_placement").as_str() {
            "fewest" => PlacementPolicy::Fewest,
            "default" => PlacementPolicy::Default,
            _ => {
                return Err(ConfigError::invalid(
                    "database_placement",
                    "must be fewest (the server with the fewest tenants) or default (the \
                     default server)",
                ));
            }
        };
        Ok(Self {
            servers,
            poolers,
            placement,
        })
    }
}

/// Where a new tenant goes when it asks for no server (`TENANCY_DATABASE_PLACEMENT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlacementPolicy {
    /// The server, default or listed, with the fewest tenants.
    #[default]
    Fewest,
    /// Always the default server.
    Default,
}

/// The application role's URL on the default server when it is not
/// `TENANCY_DATABASE_URL`'s (tenants with databases of their own:
/// `TENANCY_DATABASE_URL_TEMPLATE`), and the variable that gives it.
pub struct AppUrl {
    pub url: SecretString,
    pub variable: &'static str,
}

/// The servers tenants may be on, and how each role reaches them.
pub struct Servers {
    listed: Vec<ServerAddress>,
    poolers: Vec<(ServerAddress, ServerAddress)>,
    placement: PlacementPolicy,
    /// The application role's URL when not `TENANCY_DATABASE_URL`.
    app_url: Option<AppUrl>,
    /// The database both roles use on another server (`postgres` where tenants have
    /// databases of their own); `None`: the one their URL names, as on the default
    /// server (a schema per tenant: each server has the service's database).
    database: Option<&'static str>,
    /// `TENANCY_DATABASE_URL`: its credentials serve on other servers when `app_url` is
    /// not given.
    database_url: SecretString,
    /// `TENANCY_MIGRATION_DATABASE_URL`: the owner's credentials on other servers.
    migration_url: Option<SecretString>,
    /// Set on every application connection (`TENANCY_STATEMENT_TIMEOUT`).
    statement_timeout: std::time::Duration,
    /// Whether application connections go through a pooler in transaction mode.
    pooler: Pooler,
    /// Whether that pooler keeps prepared statements apart per client.
    pooler_prepared_statements: bool,
    /// `TENANCY_DATABASE_CA_FILE`, for URLs that check the server's certificate.
    ca_file: Option<std::path::PathBuf>,
    /// The last check of the servers and when it ran: one at a time, reused for
    /// [`SERVERS_CHECKED_FOR`].
    checked: tokio::sync::Mutex<Option<(std::time::Instant, Vec<ServerCheck>)>>,
}

/// How long a check of the servers answers `/health` and `/metrics`: each check opens one
/// connection per server, outside the pools.
const SERVERS_CHECKED_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// How a server answered a health check (`/health`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerCheck {
    /// `host[:port]`, or `default`: the server of `TENANCY_DATABASE_URL`.
    pub server: String,
    /// `up` or `down`.
    pub status: &'static str,
    pub latency_ms: f64,
    /// The tenants recorded there (`null`: the registry did not say).
    pub tenants: Option<i64>,
    /// Why it is down (shown only with `TENANCY_ERROR_DETAILS`).
    #[serde(skip)]
    pub error: Option<String>,
}

/// How many tenants a server holds (`None`: the default server).
#[derive(diesel::QueryableByName)]
struct ServerTenants {
    #[diesel(sql_type = Nullable<Text>)]
    server: Option<String>,
    #[diesel(sql_type = BigInt)]
    tenants: i64,
}

/// The tenants on each server, as the registry records them, `except` one (a tenant being
/// placed, registered already on no server yet).
async fn tenants_per_server(
    conn: &mut AsyncPgConnection,
    except: Option<Uuid>,
) -> QueryResult<Vec<ServerTenants>> {
    diesel::sql_query(
        "SELECT server, count(*) AS tenants FROM tenancy.tenants \
         WHERE id IS DISTINCT FROM $1 GROUP BY server",
    )
    .bind::<Nullable<SqlUuid>, _>(except)
    .load(conn)
    .await
}

impl Servers {
    pub fn new(
        settings: &ServerSettings,
        database: &DatabaseSettings,
        app_url: Option<AppUrl>,
        on_each: Option<&'static str>,
    ) -> Self {
        if database.pooler == Pooler::Transaction {
            let direct = (settings.servers.iter())
                .filter(|server| !settings.poolers.iter().any(|(pooled, _)| pooled == *server));
            for server in direct {
                tracing::warn!(
                    server = server.as_str(),
                    "TENANCY_POOLER=transaction, but TENANCY_DATABASE_SERVER_POOLERS names no \
                     pooler for this server: the application role connects to it directly"
                );
            }
        }
        Self {
            listed: settings.servers.clone(),
            poolers: settings.poolers.clone(),
            placement: settings.placement,
            app_url,
            database: on_each,
            database_url: database.url.clone(),
            migration_url: database.migration_url.clone(),
            statement_timeout: database.statement_timeout,
            pooler: database.pooler,
            pooler_prepared_statements: database.pooler_prepared_statements,
            ca_file: database.ca_file.clone(),
            checked: tokio::sync::Mutex::default(),
        }
    }

    /// The servers of `TENANCY_DATABASE_SERVERS`, in its order.
    pub fn listed(&self) -> &[ServerAddress] {
        &self.listed
    }

    /// Refuses a server that `TENANCY_DATABASE_SERVERS` does not list: the owner logs in
    /// to the server a tenant is placed on, with its password, so only servers the
    /// configuration names, never one a request names.
    pub fn check(&self, server: &ServerAddress) -> Result<(), String> {
        if self.listed.contains(server) {
            return Ok(());
        }
        let listed = match self.listed.as_slice() {
            [] => "none: every tenant is on the default server".to_owned(),
            listed => listed
                .iter()
                .map(ServerAddress::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        };
        Err(format!(
            "server '{}' is not one of TENANCY_DATABASE_SERVERS ({listed})",
            server.as_str()
        ))
    }
{%- if isolation != "database" %}

    /// `server`'s place in `TENANCY_DATABASE_SERVERS` (what tells the pool's connections
    /// to each server apart).
    pub fn index(&self, server: &ServerAddress) -> Result<u16, String> {
        self.check(server)?;
        let index = self.listed.iter().position(|listed| listed == server);
        index
            .and_then(|index| u16::try_from(index).ok())
            .ok_or_else(|| format!("server '{}' is beyond the list", server.as_str()))
    }
{%- endif %}

    /// The application role's connection settings on `server` (default: the default
    /// server), through the server's pooler when `TENANCY_DATABASE_SERVER_POOLERS` names
    /// one; in the database each server shares (see [`Servers::new`]).
    pub fn app_config(
        &self,
        ctx: &Context,
        server: Option<&ServerAddress>,
    ) -> Result<PgConfig, String> {
        let ca = self.ca_file.as_deref();
        let server = server.map(|server| {
            self.poolers
                .iter()
                .find(|(pooled, _)| pooled == server)
                .map_or(server, |(_, pooler)| pooler)
        });
        let mut config = match (server, &self.app_url) {
            (None, Some(app)) => PgConfig::parse(app.url.expose_secret(), ca)?,
            (None, None) => ctx.app.clone(),
            (Some(server), Some(app)) => {
                server.apply_to(app.url.expose_secret(), app.variable, ca)?
            }
            (Some(server), None) => server.apply_to(
                self.database_url.expose_secret(),
                "TENANCY_DATABASE_URL",
                ca,
            )?,
        };
        if let (Some(_), Some(database)) = (server, self.database) {
            config.dbname(database);
        }
        // As long as the default server's (TENANCY_DATABASE_POOL_TIMEOUT), unless the URL
        // says.
        let within = ctx.app.get_connect_timeout().copied();
        if let (None, Some(within)) = (config.get_connect_timeout(), within) {
            config.connect_timeout(within);
        }
        if config.get_application_name().is_none() {
            config.application_name(env!("CARGO_PKG_NAME"));
        }
        if self.pooler == Pooler::Transaction {
            config = config.through_transaction_pooler(self.pooler_prepared_statements)?;
        }
        Ok(with_statement_timeout(&config, self.statement_timeout))
    }

    /// The owner's connection settings on `server`: the migration URL itself for the
    /// default server; on another server, in the database each server shares.
    pub fn owner_config(
        &self,
        ctx: &Context,
        server: Option<&ServerAddress>,
    ) -> Result<PgConfig, String> {
        let Some(server) = server else {
            return Ok(ctx.owner.clone());
        };
        let url = self
            .migration_url
            .as_ref()
            .unwrap_or(&self.database_url)
            .expose_secret();
        let mut config = server.apply_to(
            url,
            "TENANCY_MIGRATION_DATABASE_URL",
            self.ca_file.as_deref(),
        )?;
        if let Some(database) = self.database {
            config.dbname(database);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(OWNER_CONNECT_TIMEOUT);
        }
        Ok(config)
    }

    /// The servers the registry places tenants on that `TENANCY_DATABASE_SERVERS` does not
    /// list (taken off it while tenants were there), each with its count of tenants.
    pub async fn unlisted(&self, conn: &mut AsyncPgConnection) -> QueryResult<Vec<(String, i64)>> {
        let counts = tenants_per_server(conn, None).await?;
        Ok((counts.into_iter())
            .filter_map(|c| Some((c.server?, c.tenants)))
            .filter(|(server, _)| !self.listed.iter().any(|l| l.as_str() == server))
            .collect())
    }

    /// The server of a tenant placed anew that asked for none (`placing`, when it is
    /// registered already): with `fewest`, the server (the default one or a listed one)
    /// that holds the fewest other tenants, the first in `TENANCY_DATABASE_SERVERS` order
    /// on a tie, the default server first of all. Call it in the transaction that records
    /// the answer: it waits for every other creation or placement to end first (the
    /// registry's creation lock), so that each counts the ones before it.
    pub async fn choose(
        &self,
        conn: &mut AsyncPgConnection,
        placing: Option<Uuid>,
    ) -> QueryResult<Option<ServerAddress>> {
        if self.placement == PlacementPolicy::Default || self.listed.is_empty() {
            return Ok(None);
        }
        registry::lock_creations(conn).await?;
        let counts = tenants_per_server(conn, placing).await?;
        let tenants_on = |server: Option<&ServerAddress>| {
            counts
                .iter()
                .find(|c| c.server.as_deref() == server.map(ServerAddress::as_str))
                .map_or(0, |c| c.tenants)
        };
        let candidates = std::iter::once(None).chain(self.listed.iter().map(Some));
        Ok(candidates
            .min_by_key(|server| tenants_on(*server))
            .flatten()
            .cloned())
    }

    /// Connects to every server tenants may be on (the default one, then
    /// `TENANCY_DATABASE_SERVERS`) as the application role, all at once, each within
    /// `within`, and counts the tenants recorded on each; one check at a time, its answer
    /// reused for [`SERVERS_CHECKED_FOR`].
    pub async fn check_all(&self, ctx: &Context, within: std::time::Duration) -> Vec<ServerCheck> {
        let mut checked = self.checked.lock().await;
        if let Some((at, checks)) = checked.as_ref()
            && at.elapsed() < SERVERS_CHECKED_FOR
        {
            return checks.clone();
        }
        let checks = self.check_all_now(ctx, within).await;
        *checked = Some((std::time::Instant::now(), checks.clone()));
        checks
    }

    async fn check_all_now(&self, ctx: &Context, within: std::time::Duration) -> Vec<ServerCheck> {
        let servers: Vec<Option<&ServerAddress>> = std::iter::once(None)
            .chain(self.listed.iter().map(Some))
            .collect();
        let counts = tokio::time::timeout(within, async {
            let mut conn = ctx.control.get().await.ok()?;
            tenants_per_server(&mut conn, None).await.ok()
        });
        let checks = futures_util::future::join_all(servers.iter().map(|server| async move {
            let started = std::time::Instant::now();
            let answered = match self.app_config(ctx, *server) {
                Ok(config) => tokio::time::timeout(within, async {
                    let mut conn = ctx.connect(config).await.map_err(|e| e.to_string())?;
                    diesel::sql_query("SELECT 1")
                        .execute(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|_| Err("timed out".into())),
                Err(why) => Err(why),
            };
            (started.elapsed(), answered)
        }));
        let (counts, checks) = tokio::join!(counts, checks);
        let counts = counts.ok().flatten();
        servers
            .into_iter()
            .zip(checks)
            .map(|(server, (took, answered))| ServerCheck {
                server: server.map_or("default", ServerAddress::as_str).to_owned(),
                status: if answered.is_ok() { "up" } else { "down" },
                latency_ms: (took.as_secs_f64() * 100_000.0).round() / 100.0,
                tenants: counts.as_ref().map(|counts| {
                    counts
                        .iter()
                        .find(|c| c.server.as_deref() == server.map(ServerAddress::as_str))
                        .map_or(0, |c| c.tenants)
                }),
                error: answered.err(),
            })
            .collect()
    }
}

/// `server` in words: its address, or "the default server".
pub fn server_name(server: Option<&ServerAddress>) -> &str {
    server.map_or("the default server", ServerAddress::as_str)
}

impl ServerAddress {
    /// `url` (a `postgres://` URL) pointing at this server instead of its own host and port
    /// (its `sslmode` kept: the certificate must then name this server).
    fn apply_to(
        &self,
        url: &str,
        variable: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<PgConfig, String> {
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
            self.as_str()
        );
        PgConfig::parse(&moved, ca_file).map_err(|e| format!("{variable}: {e}"))
    }
}

/// `TENANCY_DATABASE_SERVER_POOLERS`: `server=pooler` pairs, each server one of `servers`
/// and given once.
fn parse_poolers(
    list: &str,
    servers: &[ServerAddress],
) -> Result<Vec<(ServerAddress, ServerAddress)>, String> {
    let mut poolers: Vec<(ServerAddress, ServerAddress)> = Vec::new();
    for pair in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (server, pooler) = pair.split_once('=').ok_or_else(|| {
            format!("'{pair}' is not server=pooler, e.g. db2.internal:5432=db2-pool.internal:6432")
        })?;
        let server = ServerAddress::parse(server.trim())?;
        let pooler = ServerAddress::parse(pooler.trim())?;
        if !servers.contains(&server) {
            return Err(format!(
                "'{}' is not one of TENANCY_DATABASE_SERVERS (the default server's pooler is \
                 the one TENANCY_DATABASE_URL names)",
                server.as_str()
            ));
        }
        if poolers.iter().any(|(listed, _)| *listed == server) {
            return Err(format!("'{}' is given two poolers", server.as_str()));
        }
        poolers.push((server, pooler));
    }
    Ok(poolers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_server_may_have_one_pooler() {
        let servers = ["db2.internal:5432", "db3"].map(|s| ServerAddress::parse(s).unwrap());
        let poolers = parse_poolers(" db2.internal:5432 = pool2:6432,,DB3=[::1]:6432 ", &servers);
        let pairs: Vec<(&str, &str)> = (poolers.as_ref().unwrap().iter())
            .map(|(server, pooler)| (server.as_str(), pooler.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("db2.internal:5432", "pool2:6432"), ("db3", "[::1]:6432")]
        );
        for (bad, why) in [
            ("db2.internal:5432", "is not server=pooler"),
            (
                "db4:5432=pool4",
                "'db4:5432' is not one of TENANCY_DATABASE_SERVERS",
            ),
            ("db3=pool3,db3=pool4", "'db3' is given two poolers"),
            ("db3=pool 3", "'pool 3' is not a server address"),
        ] {
            let error = parse_poolers(bad, &servers).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
