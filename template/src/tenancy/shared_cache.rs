//! The shared level of the tenant cache, in Redis (prompt `redis_cache`): a tenant one
//! replica read from the registry is served to the others without a registry query.
//!
//! - Each tenant is a hash `<prefix><identifier>` with its version (`v`: `updated_at` in
//!   µs) and its data (`d`, JSON); it lives `TENANCY_TENANT_CACHE_TTL`. The prefix names
//!   the database (`tenancy:<database>:tenant:`), so services on different databases never
//!   share keys. Unknown identifiers are not stored (each replica remembers them 5 s).
//! - Changes: every replica hears of each change (`changes`) and writes a tombstone (the
//!   new version, no data) unless Redis already holds that version or a later one; a
//!   write of an older version than the one stored is refused. So a replica that read the
//!   registry just before a change cannot store what it read after the change.
//! - Redis slow or down (`TENANCY_REDIS_TIMEOUT`, default 100 ms per operation): requests
//!   go to the registry, `/health` says `degraded` with the reason, and Redis is checked
//!   every second. If a tombstone could not be written meanwhile, every key of the prefix
//!   is removed when Redis answers again, before it is used, so nothing stale survives.
//! - Everything runs on the database runtime, whose tasks outlive any HTTP worker.
//! - Redis is trusted like the registry: use a password (`redis://:password@...`), TLS
//!   (`rediss://`, verified against the web PKI roots or `TENANCY_REDIS_CA_FILE`) and a
//!   private network.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_redis::redis::AsyncConnectionConfig;
use deadpool_redis::{Pool, Runtime, Timeouts};
use secrecy::{ExposeSecret, SecretString};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::cache::Change;
use crate::domain::{Maintenance, ServerAddress, Tenant, TenantIdentifier, TenantLimits};
use crate::settings::{ConfigError, Key, Source};

/// The kinds of failed operations, in the order of `SharedCache::errors`.
const ERROR_KINDS: [&str; 3] = ["timeout", "connection", "command"];

/// How often Redis is checked while it fails.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The least time a new connection to Redis is given (made in a task of its own, see
/// `SharedCache::run`).
const CONNECT_WITHIN: Duration = Duration::from_secs(1);

/// Writes a tenant unless Redis holds a later version (KEYS[1]; ARGV: version, data, ttl ms).
const WRITE: &str = r"
local stored = redis.call('HGET', KEYS[1], 'v')
if stored and tonumber(stored) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1";

/// Replaces a tenant by a tombstone of `version` unless Redis holds that version or a
/// later one (KEYS[1]; ARGV: version, ttl ms).
const FORGET: &str = r"
local stored = redis.call('HGET', KEYS[1], 'v')
if stored and tonumber(stored) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1";

/// What the shared level reads from the configuration.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[:password@]host:6379/0`, or `rediss://` for TLS (`TENANCY_REDIS_URL`).
    pub url: SecretString,
    /// The most one Redis operation may take before the registry answers instead
    /// (`TENANCY_REDIS_TIMEOUT`, milliseconds).
    pub timeout: Duration,
    /// With `rediss://`: the CA certificates (PEM) that sign the server's certificate,
    /// instead of the web PKI roots (`TENANCY_REDIS_CA_FILE`).
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisSettings {
    pub const KEYS: &[Key] = &[
        ("redis_url", None),
        ("redis_timeout", Some("100")),
        ("redis_ca_file", None),
    ];

    pub fn read(src: &Source) -> Result<Self, ConfigError> {
        let url = src.required("redis_url", "the Redis URL, e.g. redis://cache:6379/0")?;
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::invalid(
                "redis_url",
                "must start with redis:// or rediss:// (TLS)",
            ));
        }
        let ca_file = src.optional("redis_ca_file").map(std::path::PathBuf::from);
        if ca_file.is_some() && !url.starts_with("rediss://") {
            return Err(ConfigError::invalid(
                "redis_ca_file",
                "is for TLS: TENANCY_REDIS_URL must start with rediss://",
            ));
        }
        Ok(Self {
            url: SecretString::from(url),
            timeout: Duration::from_millis(src.number("redis_timeout", 1, 60_000)?),
            ca_file,
        })
    }
}

/// A tenant as Redis holds it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    id: Uuid,
    identifier: String,
    name: String,
    status: String,
    isolation: String,
    metadata: serde_json::Value,
    /// Absent from what an older release stored: no limits of its own.
    #[serde(default)]
    limits: TenantLimits,
    #[serde(default)]
    maintenance: Maintenance,
    #[serde(default)]
    server: Option<ServerAddress>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Stored {
    fn of(tenant: &Tenant) -> Self {
        Self {
            id: tenant.id,
            identifier: tenant.identifier.to_string(),
            name: tenant.name.clone(),
            status: tenant.status.as_str().to_owned(),
            isolation: tenant.isolation.as_str().to_owned(),
            metadata: tenant.metadata.clone(),
            limits: tenant.limits,
            maintenance: tenant.maintenance,
            server: tenant.server.clone(),
            created_at: tenant.created_at,
            updated_at: tenant.updated_at,
        }
    }

    /// The tenant, if the stored value is a well-formed tenant named `identifier`.
    fn tenant(self, identifier: &TenantIdentifier) -> Option<Tenant> {
        (self.identifier == identifier.as_str()).then_some(())?;
        Some(Tenant {
            id: self.id,
            identifier: identifier.clone(),
            name: self.name,
            status: self.status.parse().ok()?,
            isolation: self.isolation.parse().ok()?,
            metadata: self.metadata,
            limits: self.limits,
            maintenance: self.maintenance,
            server: self.server,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// What `/health` and `/metrics` show of the shared level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedStats {
    pub hits: u64,
    pub misses: u64,
    /// Operations that failed, by kind: `timeout` (longer than `TENANCY_REDIS_TIMEOUT`,
    /// waiting for a free connection included),
    /// `connection` (none could be had, or it broke), `command` (Redis answered with an
    /// error).
    pub errors: BTreeMap<&'static str, u64>,
    /// Why Redis is not used now, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

pub struct SharedCache {
    pool: Pool,
    prefix: String,
    /// Where each tenant's rate-limit state lives (see `rate_script`).
    rate_prefix: String,
    ttl: Duration,
    timeout: Duration,
    runtime: Handle,
    /// Why Redis is not used now (`None`: it is).
    failing: Mutex<Option<String>>,
    /// A tombstone could not be written: every key goes before Redis is used again.
    missed: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Failed operations: timeout, connection, command.
    errors: [AtomicU64; 3],
}

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
enum RedisError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no Redis connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis: {0}")]
    Command(#[from] deadpool_redis::redis::RedisError),
    #[error("the database runtime stopped")]
    RuntimeGone,
}

impl RedisError {
    /// Its index in `ERROR_KINDS`. A connection that breaks under a command (Redis
    /// stopped, reset, refused) is a connection error, not a command one.
    fn kind(&self) -> usize {
        match self {
            Self::Timeout(_) | Self::Pool(deadpool_redis::PoolError::Timeout(_)) => 0,
            Self::Command(e) if e.is_timeout() => 0,
            Self::Command(e) if e.is_io_error() => 1,
            Self::Pool(_) | Self::RuntimeGone => 1,
            Self::Command(_) => 2,
        }
    }
}

impl SharedCache {
    /// A pool for `settings.url` (nothing is connected yet), keys prefixed by `database`.
    pub fn new(
        settings: &RedisSettings,
        database: &str,
        ttl: Duration,
        runtime: Handle,
    ) -> Result<Arc<Self>, String> {
        let url = settings.url.expose_secret();
        // A command may take the whole timeout (the client's own default, 500 ms, would cut
        // a longer one short), and making a connection at least a second.
        let connection = AsyncConnectionConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(settings.timeout.max(CONNECT_WITHIN)));
        let manager = match &settings.ca_file {
            None => deadpool_redis::Manager::new_with_config(url, connection),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("TENANCY_REDIS_CA_FILE: cannot read {}: {e}", path.display())
                })?;
                let certificates = deadpool_redis::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                let client = deadpool_redis::redis::Client::build_with_tls(url, certificates)
                    .map_err(|e| format!("TENANCY_REDIS_CA_FILE: {e}"))?;
                let info = client.get_connection_info().clone();
                deadpool_redis::Manager::new_with_config(info, connection)
            }
        }
        .map_err(|e| format!("TENANCY_REDIS_URL: {e}"))?;
        let pool = Pool::builder(manager)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| format!("TENANCY_REDIS_URL: {e}"))?;
        let cache = Arc::new(Self {
            pool,
            prefix: format!("tenancy:{database}:tenant:"),
            rate_prefix: format!("tenancy:{database}:rate:"),
            ttl,
            timeout: settings.timeout,
            runtime,
            failing: Mutex::new(None),
            missed: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: Default::default(),
        });
        Ok(cache)
    }

    fn key(&self, identifier: &TenantIdentifier) -> String {
        format!("{}{identifier}", self.prefix)
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> SharedStats {
        SharedStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            errors: ERROR_KINDS
                .iter()
                .zip(&self.errors)
                .map(|(kind, n)| (*kind, n.load(Ordering::Relaxed)))
                .collect(),
            degraded: self.failing().clone(),
        }
    }

    /// Runs `command` on a pooled connection, on the database runtime, within the timeout.
    ///
    /// A connection is taken in a task of its own: one still being made when the timeout
    /// runs out is made all the same (within `CONNECT_WITHIN`, or the timeout if longer)
    /// and pooled.
    /// Where making one takes longer than the timeout (a TLS handshake to another zone, a
    /// loaded host), the operations after it have one, instead of each giving up its own.
    async fn run<T, F, Fut>(self: &Arc<Self>, command: F) -> Result<T, RedisError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_redis::Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RedisError>> + Send,
    {
        let pool = self.pool.clone();
        let limit = self.timeout;
        // Waiting for a pooled connection ends with the operation; making one does not.
        let waits = Timeouts {
            wait: Some(limit),
            create: None,
            recycle: Some(limit),
        };
        self.runtime
            .spawn(async move {
                let taken = tokio::spawn(async move { pool.timeout_get(&waits).await });
                tokio::time::timeout(limit, async {
                    let conn = taken.await.map_err(|_| RedisError::RuntimeGone)??;
                    command(conn).await
                })
                .await
                .unwrap_or(Err(RedisError::Timeout(limit)))
            })
            .await
            .unwrap_or(Err(RedisError::RuntimeGone))
    }

    /// Runs a Lua `script` on `key` with `args`.
    async fn eval<T>(
        self: &Arc<Self>,
        script: &'static str,
        key: String,
        args: Vec<String>,
    ) -> Result<T, RedisError>
    where
        T: deadpool_redis::redis::FromRedisValue + Send + 'static,
    {
        self.run(move |mut conn| async move {
            let mut command = deadpool_redis::redis::cmd("EVAL");
            command.arg(script).arg(1).arg(key).arg(args);
            Ok(command.query_async::<T>(&mut conn).await?)
        })
        .await
    }

    /// Records a failure; the first one starts the probe that notices Redis is back.
    fn failed(self: &Arc<Self>, error: &RedisError) {
        self.errors[error.kind()].fetch_add(1, Ordering::Relaxed);
        let mut failing = self.failing();
        if failing.is_none() {
            tracing::warn!(error = %error, "Redis is not used until it answers again");
            *failing = Some(error.to_string());
            let this = Arc::downgrade(self);
            self.runtime.spawn(async move {
                loop {
                    tokio::time::sleep(PROBE_EVERY).await;
                    let Some(cache) = this.upgrade() else { return };
                    if cache.recover().await {
                        return;
                    }
                }
            });
        }
    }

    /// Whether Redis answers again; if a tombstone was missed, every key of the prefix is
    /// removed first.
    async fn recover(self: &Arc<Self>) -> bool {
        let missed = self.missed.load(Ordering::Acquire);
        let prefix = self.prefix.clone();
        let result = self
            .run(move |mut conn| async move {
                let _: String = deadpool_redis::redis::cmd("PING")
                    .query_async(&mut conn)
                    .await?;
                if missed {
                    remove_all(&mut conn, &prefix).await?;
                }
                Ok(())
            })
            .await;
        if result.is_err() {
            return false;
        }
        if missed {
            self.missed.store(false, Ordering::Release);
        }
        *self.failing() = None;
        tracing::info!(emptied = missed, "Redis answers again and is used");
        true
    }

    /// Removes every tenant of the prefix: changes may have been missed by every replica
    /// (called when this replica starts hearing of changes, at start-up or after its
    /// listening connection failed).
    pub async fn forget_all(self: &Arc<Self>) {
        if !self.usable() {
            self.missed.store(true, Ordering::Release);
            return;
        }
        let prefix = self.prefix.clone();
        let removed = self
            .run(move |mut conn| async move { remove_all(&mut conn, &prefix).await })
            .await;
        if let Err(error) = removed {
            self.missed.store(true, Ordering::Release);
            self.failed(&error);
        }
    }

    fn usable(&self) -> bool {
        self.failing().is_none()
    }

    /// The tenant named `identifier`, if Redis holds it.
    pub async fn get(self: &Arc<Self>, identifier: &TenantIdentifier) -> Option<Arc<Tenant>> {
        if !self.usable() {
            return None;
        }
        let key = self.key(identifier);
        let data = self
            .run(move |mut conn| async move {
                Ok(deadpool_redis::redis::cmd("HGET")
                    .arg(key)
                    .arg("d")
                    .query_async::<Option<String>>(&mut conn)
                    .await?)
            })
            .await;
        let tenant = match data {
            Ok(data) => data
                .and_then(|json| serde_json::from_str::<Stored>(&json).ok())
                .and_then(|stored| stored.tenant(identifier)),
            Err(error) => {
                self.failed(&error);
                return None;
            }
        };
        match tenant {
            Some(tenant) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(Arc::new(tenant))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores `tenant` (read from the registry) unless Redis holds a later version.
    pub async fn put(self: &Arc<Self>, tenant: &Tenant) {
        if !self.usable() || self.ttl.is_zero() {
            return;
        }
        let Ok(data) = serde_json::to_string(&Stored::of(tenant)) else {
            return;
        };
        let (key, version, ttl) = (
            self.key(&tenant.identifier),
            tenant.updated_at.timestamp_micros(),
            self.ttl.as_millis() as u64,
        );
        let written =
            self.eval::<i64>(WRITE, key, vec![version.to_string(), data, ttl.to_string()]);
        if let Err(error) = written.await {
            self.failed(&error);
        }
    }

    /// Makes Redis forget what a change replaced (see the module's notes).
    pub async fn forget(self: &Arc<Self>, change: &Change) {
        if !self.usable() {
            self.missed.store(true, Ordering::Release);
            return;
        }
        let (identifier, version) = match change {
            Change::Written {
                identifier,
                version,
            } => (identifier, *version),
            Change::Removed(identifier) => (identifier, i64::MAX),
        };
        let (key, ttl) = (self.key(identifier), self.ttl.as_millis().max(1) as u64);
        let forgotten = self.eval::<i64>(FORGET, key, vec![version.to_string(), ttl.to_string()]);
        if let Err(error) = forgotten.await {
            self.missed.store(true, Ordering::Release);
            self.failed(&error);
        }
    }
}

impl SharedCache {
    /// Runs a Lua `script` on `tenant`'s rate-limit key (the rate limiter's own state),
    /// for every replica at once; `None` when Redis cannot say (the failure is recorded
    /// as the cache's are).
    pub async fn rate_script<T>(
        self: &Arc<Self>,
        script: &'static str,
        tenant: Uuid,
        args: Vec<String>,
    ) -> Option<T>
    where
        T: deadpool_redis::redis::FromRedisValue + Send + 'static,
    {
        if !self.usable() {
            return None;
        }
        let key = format!("{}{tenant}", self.rate_prefix);
        match self.eval::<T>(script, key, args).await {
            Ok(answer) => Some(answer),
            Err(error) => {
                self.failed(&error);
                None
            }
        }
    }
}

/// Deletes every key that starts with `prefix`.
async fn remove_all(conn: &mut deadpool_redis::Connection, prefix: &str) -> Result<(), RedisError> {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = deadpool_redis::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut *conn)
            .await?;
        if !keys.is_empty() {
            let _: u64 = deadpool_redis::redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut *conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_redis_urls_are_accepted_and_never_shown() {
        let keys: &'static [Key] = RedisSettings::KEYS;
        let read = |url: &str| RedisSettings::read(&Source::of(&[("redis_url", url)], keys));
        let settings = read("rediss://:redis-s3cret@cache:6380/0").unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(100));
        assert!(!format!("{settings:?}").contains("redis-s3cret"));
        let refused = read("http://cache:6379").unwrap_err().to_string();
        assert!(refused.starts_with("TENANCY_REDIS_URL"), "{refused}");
    }

    #[test]
    fn a_connection_that_breaks_under_a_command_is_a_connection_error_and_a_wait_a_timeout() {
        use deadpool_redis::redis::{ErrorKind, RedisError as Redis};
        use std::io;
        let kind = |e: RedisError| ERROR_KINDS[e.kind()];
        let io = |kind: io::ErrorKind| RedisError::Command(Redis::from(io::Error::from(kind)));
        assert_eq!(kind(io(io::ErrorKind::ConnectionReset)), "connection");
        assert_eq!(kind(io(io::ErrorKind::ConnectionRefused)), "connection");
        assert_eq!(kind(io(io::ErrorKind::BrokenPipe)), "connection");
        assert_eq!(kind(io(io::ErrorKind::TimedOut)), "timeout");
        assert_eq!(
            kind(RedisError::Timeout(Duration::from_millis(100))),
            "timeout"
        );
        // Every connection in use for the whole timeout: a timeout, not a broken connection.
        let waited = deadpool_redis::PoolError::Timeout(deadpool_redis::TimeoutType::Wait);
        assert_eq!(kind(RedisError::Pool(waited)), "timeout");
        let closed = deadpool_redis::PoolError::Closed;
        assert_eq!(kind(RedisError::Pool(closed)), "connection");
        let answered = Redis::from((ErrorKind::UnexpectedReturnType, "not an integer"));
        assert_eq!(kind(RedisError::Command(answered)), "command");
    }

    #[test]
    fn a_stored_tenant_is_used_only_under_its_own_identifier() {
        let stored = || Stored {
            id: Uuid::nil(),
            identifier: "acme".into(),
            name: "Acme".into(),
            status: "active".into(),
            isolation: "rls".into(),
            metadata: serde_json::json!({}),
            limits: TenantLimits::default(),
            maintenance: Maintenance::Off,
            server: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let acme = TenantIdentifier::parse("acme").unwrap();
        let globex = TenantIdentifier::parse("globex").unwrap();
        assert!(stored().tenant(&acme).is_some());
        assert!(stored().tenant(&globex).is_none());
        let mut bad = stored();
        bad.status = "superuser".into();
        assert!(bad.tenant(&acme).is_none());
    }

    #[test]
    fn what_an_older_release_stored_is_a_tenant_on_the_default_server() {
        let older = serde_json::json!({
            "id": Uuid::nil(), "identifier": "acme", "name": "Acme", "status": "active",
            "isolation": "rls", "metadata": {}, "created_at": Utc::now(),
            "updated_at": Utc::now(),
        });
        let acme = TenantIdentifier::parse("acme").unwrap();
        let stored: Stored = serde_json::from_value(older.clone()).unwrap();
        assert_eq!(stored.tenant(&acme).unwrap().server, None);
        // A server that is no address is not a tenant: it is read from the registry.
        let mut odd = older;
        odd["server"] = "db2.internal:5432; DROP".into();
        assert!(serde_json::from_value::<Stored>(odd).is_err());
    }
}
