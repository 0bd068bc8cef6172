//! The database settings: the two roles' URLs, pool sizes and timeouts (the README's
//! "Connections" section says how the sizes combine).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::db::connect::server_of;
use crate::db::tls::{PgConfig, check_ca_file};
use crate::settings::{ConfigError, Key, Source};

/// How long the owner's connections (migrations, provisioning, moves) wait for a server
/// to take them, unless `TENANCY_MIGRATION_DATABASE_URL` says (`connect_timeout`): a
/// server that does not answer is given up instead of waited for minutes.
pub const OWNER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// The application role (`TENANCY_DATABASE_URL`).
    pub url: SecretString,
    /// The role that owns the tables (migrations, provisioning, destroy); defaults to
    /// `url` (`TENANCY_MIGRATION_DATABASE_URL`).
    pub migration_url: Option<SecretString>,
    /// With `max_overflow`: the most connections one tenant may hold at once, unless a
    /// quarter of `max_total_connections` is less, or `tenant_max_connections` is set.
    pub pool_size: u32,
    /// Added to `pool_size` for one tenant's bursts.
    pub max_overflow: u32,
    /// Hard cap on open tenant connections in this process, over all tenants.
    pub max_total_connections: u32,
    /// The most connections one tenant may hold at once (`TENANCY_TENANT_MAX_CONNECTIONS`;
    /// a tenant's own limit in the registry overrides it). See [`Self::per_tenant_max`].
    pub tenant_max_connections: Option<u32>,
    /// Connections of the control pool (tenant registry, health, admin).
    pub control_pool_size: u32,
    /// How long a request waits for a connection before it gets 503.
    pub pool_timeout: Duration,
    /// Connections are closed and replaced after this long.
    pub pool_recycle: Duration,
    /// Idle connections close after this long.
    pub tenant_pool_idle_timeout: Duration,
    /// PostgreSQL cancels a statement of the application role after this long.
    pub statement_timeout: Duration,
    /// Statements that take longer are logged at WARN (`TENANCY_SLOW_QUERY_MS`; 0: none).
    pub slow_query: Option<Duration>,
    /// The CA that signs PostgreSQL's certificates, for URLs with `sslmode=verify-ca` or
    /// `verify-full` and no `sslrootcert` (`TENANCY_DATABASE_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// What `TENANCY_DATABASE_URL` leads to: PostgreSQL itself (or a pooler in session
    /// mode), or a pooler in transaction mode (`TENANCY_POOLER`).
    pub pooler: Pooler,
    /// Whether the transaction pooler keeps named prepared statements apart per client
    /// (PgBouncer 1.21 and newer with `max_prepared_statements`;
    /// `TENANCY_POOLER_PREPARED_STATEMENTS`). Without it, no statement is prepared once and
    /// reused: each is prepared, run and closed inside its transaction.
    pub pooler_prepared_statements: bool,
    /// A URL with a session of its own for `LISTEN` (`TENANCY_LISTEN_DATABASE_URL`); with a
    /// transaction pooler, the migration URL serves when this is not set.
    pub listen_url: Option<SecretString>,
}

/// How connections reach PostgreSQL (`TENANCY_POOLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooler {
    /// PostgreSQL itself, or a pooler in session mode: a connection is one server session
    /// for its whole life, so a tenant's scope is set on it once and kept (`session`, the
    /// default and the fastest).
    Session,
    /// A pooler in transaction mode (PgBouncer, Supavisor, RDS Proxy): each transaction
    /// may run on another server session, so every tenant checkout is one transaction that
    /// sets its scope for that transaction alone (`transaction`).
    Transaction,
}

impl Pooler {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::Session => "session",
            Pooler::Transaction => "transaction",
        }
    }
}

impl DatabaseSettings {
    pub const KEYS: &[Key] = &[
        ("database_url", None),
        ("migration_database_url", None),
        ("database_pool_size", Some("{% if isolation == "database" %}2{% else %}10{% endif %}")),
        ("database_max_overflow", Some("{% if isolation == "database" %}2{% else %}10{% endif %}")),
        ("max_total_connections", Some("40")),
        ("tenant_max_connections", None),
        ("control_pool_size", Some("4")),
        ("database_pool_timeout", Some("5")),
        ("database_pool_recycle", Some("1800")),
        ("tenant_pool_idle_timeout", Some("300")),
        ("statement_timeout", Some("30")),
        ("slow_query_ms", Some("500")),
        ("database_ca_file", None),
        ("pooler", Some("session")),
        ("pooler_prepared_statements", Some("false")),
        ("listen_database_url", None),
    ];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let url = src.required(
            "database_url",
            "the PostgreSQL URL, e.g. postgres://app:secret@db:5432/app",
        )?;
        check_postgres_url("database_url", &url)?;
        Ok(Self {
            url: SecretString::from(url),
            migration_url: match src.optional("migration_database_url") {
                Some(url) => {
                    check_postgres_url("migration_database_url", &url)?;
                    Some(SecretString::from(url))
                }
                None => None,
            },
            pool_size: src.number("database_pool_size", 1, 1_000)?,
            max_overflow: src.number("database_max_overflow", 0, 1_000)?,
            max_total_connections: src.number("max_total_connections", 1, 100_000)?,
            tenant_max_connections: match src.optional("tenant_max_connections") {
                Some(_) => Some(src.number("tenant_max_connections", 1, 100_000)?),
                None => None,
            },
            control_pool_size: src.number("control_pool_size", 1, 1_000)?,
            pool_timeout: src.seconds("database_pool_timeout", 1, 600)?,
            pool_recycle: src.seconds("database_pool_recycle", 1, 7 * 24 * 3600)?,
            tenant_pool_idle_timeout: src.seconds("tenant_pool_idle_timeout", 1, 24 * 3600)?,
            statement_timeout: src.seconds("statement_timeout", 1, 24 * 3600)?,
            ca_file: match src.optional("database_ca_file") {
                Some(path) => {
                    let path = PathBuf::from(path);
                    check_ca_file(&path)
                        .map_err(|why| ConfigError::invalid("database_ca_file", why))?;
                    Some(path)
                }
                None => None,
            },
            slow_query: match src.number::<u64>("slow_query_ms", 0, 24 * 3600 * 1000)? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            pooler: match src.get("pooler").as_str() {
                "session" => Pooler::Session,
                "transaction" => Pooler::Transaction,
                _ => {
                    return Err(ConfigError::invalid(
                        "pooler",
                        "must be session (PostgreSQL itself, or a pooler in session mode) or \
                         transaction (PgBouncer, Supavisor or RDS Proxy in transaction mode)",
                    ));
                }
            },
            pooler_prepared_statements: src.boolean("pooler_prepared_statements")?,
            listen_url: match src.optional("listen_database_url") {
                Some(url) => {
                    check_postgres_url("listen_database_url", &url)?;
                    Some(SecretString::from(url))
                }
                None => None,
            },
        })
    }

    /// Whether no URL gives `LISTEN` a session (a transaction pooler, and neither
    /// `TENANCY_LISTEN_DATABASE_URL` nor the migration URL): tenant changes are polled.
    pub fn polls_changes(&self) -> bool {
        self.pooler == Pooler::Transaction
            && self.listen_url.is_none()
            && self.migration_url.is_none()
    }

    /// The most connections one tenant may hold at once, unless the registry gives it a
    /// limit of its own: `TENANCY_TENANT_MAX_CONNECTIONS` when set, else the smaller of
    /// `POOL_SIZE + MAX_OVERFLOW` and a quarter of `TENANCY_MAX_TOTAL_CONNECTIONS`, so
    /// that four busy tenants leave nothing to the rest at most.
    pub fn per_tenant_max(&self) -> u32 {
        self.tenant_max_connections
            .unwrap_or_else(|| {
                (self.pool_size + self.max_overflow).min(self.max_total_connections / 4)
            })
            .clamp(1, self.max_total_connections)
    }

    /// The application role's `user@host:port/database`, for logs: built from the parsed
    /// URL, so a password is never part of it, whichever way the URL carries one
    /// (`user:password@`, `?password=`, or `password=` in key=value form).
    pub fn describe(&self) -> String {
        match PgConfig::settings_only(self.url.expose_secret()) {
            Ok(config) => format!(
                "{}@{}/{}",
                config.get_user().unwrap_or("(default user)"),
                server_of(&config),
                config.get_dbname().unwrap_or("(default database)")
            ),
            Err(_) => "(not a PostgreSQL URL)".to_owned(),
        }
    }
}

/// Refuses what is not a PostgreSQL URL, or a `sslmode` / `sslrootcert` that cannot be
/// used (a CA file that cannot be read); the URL is not echoed.
pub fn check_postgres_url(key: &str, url: &str) -> Result<(), ConfigError> {
    PgConfig::parse(url, None)
        .map(drop)
        .map_err(|why| ConfigError::invalid(key, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_never_holds_the_password() {
        for url in [
            "postgres://app:s3cret@db:5433/app",
            "postgres://app@db:5433/app?password=s3cret",
            "host=db port=5433 user=app password=s3cret dbname=app",
        ] {
            let src = Source::of(&[("TENANCY_DATABASE_URL", url)], DatabaseSettings::KEYS);
            let shown = DatabaseSettings::read(&src).unwrap().describe();
            assert_eq!(shown, "app@db:5433/app", "{url}");
        }
    }
}
