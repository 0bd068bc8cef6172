//! Settings: defaults, then an optional TOML file (`TENANCY_CONFIG_FILE`), then `TENANCY_*`
//! environment variables, validated once at start-up.
//!
//! Every error names the variable to fix. Secrets (`TENANCY_DATABASE_URL`,
//! `TENANCY_ADMIN_TOKEN`) are held in `SecretString` and never printed: use
//! [`redact_url`] to show a database URL.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
{%- if isolation == "database" %}

use crate::domain::IdentifierPrefix;
{%- endif %}
{%- if isolation == "hybrid" %}

use crate::domain::Isolation;
{%- endif %}

use crate::tenancy::resolve::ResolveSettings;
{%- if header_resolver %}
use crate::tenancy::resolve::header::HeaderSettings;
{%- endif %}
{%- if jwt_resolver %}
use crate::tenancy::resolve::jwt::{JwtConfig, Verifier};
{%- endif %}
{%- if path_resolver %}
use crate::tenancy::resolve::path::PathSettings;
{%- endif %}
{%- if subdomain_resolver %}
use crate::tenancy::resolve::subdomain::SubdomainSettings;
{%- endif %}

const PREFIX: &str = "TENANCY_";
/// Compiled-in strategies; `TENANCY_ISOLATION_STRATEGY` / `TENANCY_RESOLUTION_STRATEGY`, when set, must agree.
pub const ISOLATION_STRATEGY: &str = "{{isolation}}";
pub const RESOLUTION_STRATEGY: &str = "{{resolution}}";
/// Admin tokens shorter than this are refused.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {message}")]
    Invalid { var: String, message: String },
    #[error("{var} is required: {hint}")]
    Missing { var: String, hint: &'static str },
    #[error("configuration file: {0}")]
    File(String),
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var_name(key),
        message: message.into(),
    }
}

/// `database_pool_size` -> `TENANCY_DATABASE_POOL_SIZE`.
pub fn var_name(key: &str) -> String {
    format!("{PREFIX}{}", key.to_uppercase())
}

/// The validated settings of one process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; defaults to the number of CPUs.
    pub workers: Option<usize>,
    pub shutdown_timeout: Duration,
    pub database_url: SecretString,
    /// The role that owns the tables (migrations, provisioning, destroy); defaults to
    /// `database_url`.
    pub migration_database_url: Option<SecretString>,
    pub database: DatabaseSettings,
    /// What the tenant resolver{% if resolution == "chain" %}s{% endif %} read.
    pub resolve: ResolveSettings,
    pub error_details: bool,
    pub tenant_cache_ttl: Duration,
    pub admin_token: Option<SecretString>,
{%- if isolation == "hybrid" %}
    /// The tier of a tenant created without one: `schema` or `rls`.
    pub default_isolation: Isolation,
{%- endif %}
{%- if isolation == "database" %}
    /// Tenant `acme`'s database is `<prefix>acme`.
    pub tenant_database_prefix: IdentifierPrefix,
    /// The application role's URL of a tenant database, `{database}` standing for its
    /// name; default: `database_url` with its database name replaced.
    pub database_url_template: Option<SecretString>,
{%- endif %}
}

/// Pool sizes and timeouts (see the README's "Connections" section for how they combine).
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// With `max_overflow`: the most connections one tenant may hold at once.
    pub pool_size: u32,
    /// Added to `pool_size` for one tenant's bursts.
    pub max_overflow: u32,
    /// Hard cap on open tenant connections in this process, over all tenants.
    pub max_total_connections: u32,
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
}

impl DatabaseSettings {
    /// The most connections one tenant may hold at once.
    pub fn per_tenant_max(&self) -> u32 {
        self.pool_size + self.max_overflow
    }
}

/// Every key this service reads, with its default (None: required or optional).
const KEYS: &[(&str, Option<&str>)] = &[
    ("host", Some("0.0.0.0")),
    ("port", Some("8000")),
    ("workers", None),
    ("shutdown_timeout", Some("30")),
    ("database_url", None),
    ("migration_database_url", None),
    ("database_pool_size", Some("{% if isolation == "database" %}2{% else %}10{% endif %}")),
    ("database_max_overflow", Some("{% if isolation == "database" %}2{% else %}10{% endif %}")),
    ("max_total_connections", Some("40")),
    ("control_pool_size", Some("4")),
    ("database_pool_timeout", Some("5")),
    ("database_pool_recycle", Some("1800")),
    ("tenant_pool_idle_timeout", Some("300")),
    ("statement_timeout", Some("30")),
{%- if header_resolver %}
    ("tenant_header", Some("X-Tenant-ID")),
{%- endif %}
{%- if subdomain_resolver %}
    ("domain_suffix", None),
    ("trust_forwarded_host", Some("false")),
{%- endif %}
{%- if path_resolver %}
    ("path_prefix", Some("/t")),
{%- endif %}
{%- if jwt_resolver %}
    ("jwt_secret", None),
    ("jwt_public_key_file", None),
    ("jwt_jwks_file", None),
    ("jwt_algorithms", None),
    ("jwt_issuer", None),
    ("jwt_audience", None),
    ("jwt_leeway", Some("30")),
    ("jwt_tenant_claim", Some("tenant_id")),
{%- endif %}
    ("error_details", Some("false")),
    ("tenant_cache_ttl", Some("30")),
    ("admin_token", None),
    ("isolation_strategy", None),
    ("resolution_strategy", None),
    ("config_file", None),
{%- if isolation == "hybrid" %}
    ("default_isolation", Some("rls")),
{%- endif %}
{%- if isolation == "database" %}
    ("tenant_database_prefix", Some("tenant_")),
    ("database_url_template", None),
{%- endif %}
];

impl Settings {
    /// Reads the process environment (and `TENANCY_CONFIG_FILE` when set).
    pub fn load() -> Result<(Self, Vec<String>), ConfigError> {
        Self::from_env_map(std::env::vars().collect())
    }

    /// Builds settings from an explicit environment; `load` and the tests use it.
    /// Returns warnings (unknown `TENANCY_*` variables) beside the settings.
    pub fn from_env_map(env: HashMap<String, String>) -> Result<(Self, Vec<String>), ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = env.get("TENANCY_CONFIG_FILE") {
            builder = builder
                .add_source(config::File::new(path, config::FileFormat::Toml).required(true));
        }
        let environment = config::Environment::with_prefix("TENANCY").source(Some(env));
        let merged = builder
            .add_source(environment)
            .build()
            .map_err(|e| ConfigError::File(e.to_string()))?;
        let table: HashMap<String, config::Value> = merged
            .try_deserialize()
            .map_err(|e| ConfigError::File(e.to_string()))?;

        let mut values = HashMap::new();
        let mut warnings = Vec::new();
        for (key, value) in table {
            let key = key.to_lowercase();
            if key.starts_with("test_") {
                // TENANCY_TEST_* belong to the test suite, not to the service.
                continue;
            }
            if KEYS.iter().any(|(known, _)| *known == key) {
                let text = value
                    .into_string()
                    .map_err(|e| invalid(&key, e.to_string()))?;
                values.insert(key, text);
            } else if key == "debug_headers" {
                // Its former name, still read; the new name wins if both are set.
                let text = value
                    .into_string()
                    .map_err(|e| invalid(&key, e.to_string()))?;
                values.entry("error_details".to_owned()).or_insert(text);
                warnings.push(format!(
                    "{} is the former name of {} (it adds internals to error bodies, not \
                     headers): read as such; rename it",
                    var_name(&key),
                    var_name("error_details")
                ));
            } else if key == "skip_paths" {
                warnings.push(format!(
                    "{} is ignored: only routes under /api need a tenant; health, metrics \
                     and the admin API never do, and a public route belongs outside /api",
                    var_name(&key)
                ));
            } else {
                warnings.push(format!(
                    "{} is not a setting of this service and is ignored",
                    var_name(&key)
                ));
            }
        }
        warnings.sort();
        Ok((Self::from_values(&Values(values))?, warnings))
    }

    fn from_values(v: &Values) -> Result<Self, ConfigError> {
        v.check_strategy("isolation_strategy", ISOLATION_STRATEGY)?;
        v.check_strategy("resolution_strategy", RESOLUTION_STRATEGY)?;

        let database_url = v.required(
            "database_url",
            "the PostgreSQL URL, e.g. postgres://app:secret@db:5432/app",
        )?;
        if let Err(e) = tokio_postgres::Config::from_str(&database_url) {
            // The message of tokio-postgres never contains the password; the URL is not echoed.
            return Err(invalid(
                "database_url",
                format!("not a PostgreSQL URL ({e})"),
            ));
        }

        let migration_database_url = match v.optional("migration_database_url") {
            Some(url) => {
                if let Err(e) = tokio_postgres::Config::from_str(&url) {
                    return Err(invalid(
                        "migration_database_url",
                        format!("not a PostgreSQL URL ({e})"),
                    ));
                }
                Some(SecretString::from(url))
            }
            None => None,
        };

        let database = DatabaseSettings {
            pool_size: v.number("database_pool_size", 1, 1_000)?,
            max_overflow: v.number("database_max_overflow", 0, 1_000)?,
            max_total_connections: v.number("max_total_connections", 1, 100_000)?,
            control_pool_size: v.number("control_pool_size", 1, 1_000)?,
            pool_timeout: v.seconds("database_pool_timeout", 1, 600)?,
            pool_recycle: v.seconds("database_pool_recycle", 1, 7 * 24 * 3600)?,
            tenant_pool_idle_timeout: v.seconds("tenant_pool_idle_timeout", 1, 24 * 3600)?,
            statement_timeout: v.seconds("statement_timeout", 1, 24 * 3600)?,
        };

{%- if header_resolver %}
        let tenant_header = v.get("tenant_header");
        if actix_web::http::header::HeaderName::from_str(&tenant_header).is_err() {
            return Err(invalid("tenant_header", "not a valid HTTP header name"));
        }
{%- endif %}
{%- if subdomain_resolver %}
        let domain_suffix = v
            .required(
                "domain_suffix",
                "the domain under which tenants live, e.g. .example.com",
            )?
            .to_ascii_lowercase();
        let valid_suffix = domain_suffix.len() > 1
            && domain_suffix.starts_with('.')
            && !domain_suffix.ends_with('.')
            && domain_suffix[1..].split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_suffix {
            return Err(invalid(
                "domain_suffix",
                "must look like .example.com (a leading dot, DNS labels, no port)",
            ));
        }
{%- endif %}
{%- if path_resolver %}
        let path_prefix = v.get("path_prefix");
        let valid_prefix = path_prefix.len() > 1
            && path_prefix.starts_with('/')
            && !path_prefix.ends_with('/')
            && path_prefix[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b));
        if !valid_prefix {
            return Err(invalid(
                "path_prefix",
                "must look like /t (a leading slash, no trailing one)",
            ));
        }
{%- endif %}
{%- if jwt_resolver %}
        let (secret, public_key_file, jwks_file, algorithms, issuer, audience, tenant_claim) = (
            v.optional("jwt_secret"),
            v.optional("jwt_public_key_file"),
            v.optional("jwt_jwks_file"),
            v.optional("jwt_algorithms"),
            v.optional("jwt_issuer"),
            v.optional("jwt_audience"),
            v.get("jwt_tenant_claim"),
        );
        let jwt = Verifier::new(JwtConfig {
            secret: secret.as_deref(),
            public_key_file: public_key_file.as_deref(),
            jwks_file: jwks_file.as_deref(),
            algorithms: algorithms.as_deref(),
            issuer: issuer.as_deref(),
            audience: audience.as_deref(),
            leeway: v.number("jwt_leeway", 0, 3600)?,
            tenant_claim: &tenant_claim,
        })
        .map_err(|(key, message)| invalid(key, message))?;
{%- endif %}

        let admin_token = match v.optional("admin_token") {
            Some(token) if token.len() < MIN_SECRET_LEN => {
                return Err(invalid(
                    "admin_token",
                    format!(
                        "must be at least {MIN_SECRET_LEN} characters (try: openssl rand -base64 48)"
                    ),
                ));
            }
            Some(token) => Some(SecretString::from(token)),
            None => None,
        };

        let workers = match v.optional("workers") {
            Some(_) => Some(v.number::<usize>("workers", 1, 1_024)?),
            None => None,
        };

{%- if isolation == "hybrid" %}
        let default_isolation = v
            .get("default_isolation")
            .parse::<Isolation>()
            .ok()
            .filter(|i| matches!(i, Isolation::Schema | Isolation::Rls))
            .ok_or_else(|| invalid("default_isolation", "must be schema or rls"))?;
{%- endif %}
{%- if isolation == "database" %}
        let tenant_database_prefix = IdentifierPrefix::parse(&v.get("tenant_database_prefix"))
            .map_err(|why| invalid("tenant_database_prefix", why))?;
        let database_url_template = match v.optional("database_url_template") {
            Some(template) => {
                let sample = template.replace("{database}", "tenant_sample");
                if !template.contains("{database}") {
                    return Err(invalid(
                        "database_url_template",
                        "must contain {database}, e.g. postgres://app@db:5432/{database}",
                    ));
                }
                if let Err(e) = tokio_postgres::Config::from_str(&sample) {
                    return Err(invalid(
                        "database_url_template",
                        format!("not a PostgreSQL URL ({e})"),
                    ));
                }
                Some(SecretString::from(template))
            }
            None => None,
        };
{%- endif %}

        Ok(Self {
            host: v.get("host"),
            port: v.number("port", 0, u16::MAX)?,
            workers,
            shutdown_timeout: v.seconds("shutdown_timeout", 0, 3600)?,
            database_url: SecretString::from(database_url),
            migration_database_url,
            database,
            resolve: ResolveSettings {
{%- if header_resolver %}
                header: HeaderSettings {
                    name: tenant_header,
                },
{%- endif %}
{%- if subdomain_resolver %}
                subdomain: SubdomainSettings {
                    domain_suffix,
                    trust_forwarded_host: v.boolean("trust_forwarded_host")?,
                },
{%- endif %}
{%- if path_resolver %}
                path: PathSettings {
                    prefix: path_prefix,
                },
{%- endif %}
{%- if jwt_resolver %}
                jwt: std::sync::Arc::new(jwt),
{%- endif %}
            },
            error_details: v.boolean("error_details")?,
            tenant_cache_ttl: v.seconds("tenant_cache_ttl", 0, 3600)?,
            admin_token,
{%- if isolation == "hybrid" %}
            default_isolation,
{%- endif %}
{%- if isolation == "database" %}
            tenant_database_prefix,
            database_url_template,
{%- endif %}
        })
    }

    /// The database URL with its password replaced by `***`, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact_url(self.database_url.expose_secret())
    }
}

/// Replaces the password of a `scheme://user:password@host/...` URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "***".into();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{}{}{}", &url[..scheme_end + 3], shown, &rest[at..])
        }
        None => url.to_owned(),
    }
}

struct Values(HashMap<String, String>);

impl Values {
    fn default_of(key: &str) -> Option<&'static str> {
        KEYS.iter().find(|(k, _)| *k == key).and_then(|(_, d)| *d)
    }

    fn optional(&self, key: &str) -> Option<String> {
        self.0
            .get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .or_else(|| Self::default_of(key).map(str::to_owned))
    }

    fn get(&self, key: &str) -> String {
        self.optional(key).unwrap_or_default()
    }

    fn required(&self, key: &str, hint: &'static str) -> Result<String, ConfigError> {
        self.optional(key).ok_or_else(|| ConfigError::Missing {
            var: var_name(key),
            hint,
        })
    }

    fn number<T>(&self, key: &str, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let raw = self.get(key);
        let value: T = raw
            .parse()
            .map_err(|_| invalid(key, format!("'{raw}' is not a whole number")))?;
        if value < min || value > max {
            return Err(invalid(key, format!("{value} is outside {min}..={max}")));
        }
        Ok(value)
    }

    fn seconds(&self, key: &str, min: u64, max: u64) -> Result<Duration, ConfigError> {
        self.number(key, min, max).map(Duration::from_secs)
    }

    fn boolean(&self, key: &str) -> Result<bool, ConfigError> {
        match self.get(key).to_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            other => Err(invalid(key, format!("'{other}' is not true or false"))),
        }
    }

    fn check_strategy(&self, key: &str, compiled: &str) -> Result<(), ConfigError> {
        match self.optional(key) {
            Some(value) if value != compiled => Err(invalid(
                key,
                format!(
                    "this service was generated with '{compiled}'; '{value}' needs a service generated for it"
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("TENANCY_DATABASE_URL".into())
            .or_insert_with(|| "postgres://app:s3cret@localhost/app".into());
{%- if subdomain_resolver %}
        map.entry("TENANCY_DOMAIN_SUFFIX".into())
            .or_insert_with(|| ".example.test".into());
{%- endif %}
{%- if jwt_resolver %}
        map.entry("TENANCY_JWT_SECRET".into())
            .or_insert_with(|| "jwt-secret-0123456789abcdef0123456789".into());
{%- endif %}
        map
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        match Settings::from_env_map(env(pairs)) {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_sensible() {
        let (settings, warnings) = Settings::from_env_map(env(&[])).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(settings.port, 8000);
{%- if header_resolver %}
        assert_eq!(settings.resolve.header.name, "X-Tenant-ID");
{%- endif %}
{%- if path_resolver %}
        assert_eq!(settings.resolve.path.prefix, "/t");
{%- endif %}
{%- if isolation == "database" %}
        // Ten busy tenants fit under the cap without closing each other's connections.
        assert_eq!(settings.database.per_tenant_max(), 4);
        assert_eq!(settings.database.max_total_connections, 40);
        assert_eq!(
            settings.tenant_database_prefix,
            IdentifierPrefix::parse("tenant_").unwrap()
        );
{%- else %}
        // Shared connections: one tenant may hold half of them at most.
        assert_eq!(settings.database.per_tenant_max(), 20);
        assert_eq!(settings.database.max_total_connections, 40);
{%- endif %}
        assert_eq!(settings.database.statement_timeout, Duration::from_secs(30));
        assert!(!settings.error_details);
        assert!(settings.admin_token.is_none());
    }

    #[test]
    fn reads_flat_variables() {
        let (settings, _) = Settings::from_env_map(env(&[
            ("TENANCY_DATABASE_POOL_SIZE", "20"),
            ("TENANCY_DATABASE_MAX_OVERFLOW", "10"),
            ("TENANCY_DATABASE_POOL_TIMEOUT", "30"),
            ("TENANCY_DATABASE_POOL_RECYCLE", "1800"),
            ("TENANCY_DEBUG_HEADERS", "true"),
            ("TENANCY_ISOLATION_STRATEGY", ISOLATION_STRATEGY),
            ("TENANCY_RESOLUTION_STRATEGY", RESOLUTION_STRATEGY),
        ]))
        .unwrap();
        assert_eq!(settings.database.pool_size, 20);
        assert_eq!(settings.database.max_overflow, 10);
        assert_eq!(settings.database.pool_timeout, Duration::from_secs(30));
        // TENANCY_DEBUG_HEADERS, read under its new name.
        assert!(settings.error_details);
    }

    #[test]
    fn the_former_name_of_error_details_is_read_and_the_new_one_wins() {
        let (settings, warnings) =
            Settings::from_env_map(env(&[("TENANCY_DEBUG_HEADERS", "true")])).unwrap();
        assert!(settings.error_details);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .starts_with("TENANCY_DEBUG_HEADERS is the former name of TENANCY_ERROR_DETAILS"),
            "{warnings:?}"
        );
        let (settings, _) = Settings::from_env_map(env(&[
            ("TENANCY_DEBUG_HEADERS", "true"),
            ("TENANCY_ERROR_DETAILS", "false"),
        ]))
        .unwrap();
        assert!(!settings.error_details);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("TENANCY_DATABASE_POOL_SIZE", "abc")],
                "TENANCY_DATABASE_POOL_SIZE",
            ),
            (
                &[("TENANCY_DATABASE_POOL_SIZE", "0")],
                "TENANCY_DATABASE_POOL_SIZE",
            ),
            (
                &[("TENANCY_DATABASE_POOL_TIMEOUT", "-1")],
                "TENANCY_DATABASE_POOL_TIMEOUT",
            ),
            (&[("TENANCY_PORT", "70000")], "TENANCY_PORT"),
            (
                &[("TENANCY_ERROR_DETAILS", "maybe")],
                "TENANCY_ERROR_DETAILS",
            ),
{%- if header_resolver %}
            (
                &[("TENANCY_TENANT_HEADER", "bad header")],
                "TENANCY_TENANT_HEADER",
            ),
{%- endif %}
{%- if subdomain_resolver %}
            (
                &[("TENANCY_DOMAIN_SUFFIX", "example.com")],
                "TENANCY_DOMAIN_SUFFIX",
            ),
            (
                &[("TENANCY_DOMAIN_SUFFIX", ".example.com:443")],
                "TENANCY_DOMAIN_SUFFIX",
            ),
{%- endif %}
{%- if path_resolver %}
            (&[("TENANCY_PATH_PREFIX", "t")], "TENANCY_PATH_PREFIX"),
            (&[("TENANCY_PATH_PREFIX", "/t/")], "TENANCY_PATH_PREFIX"),
{%- endif %}
            (&[("TENANCY_ADMIN_TOKEN", "short")], "TENANCY_ADMIN_TOKEN"),
            (
                &[("TENANCY_ISOLATION_STRATEGY", "nope")],
                "TENANCY_ISOLATION_STRATEGY",
            ),
            (
                &[("TENANCY_DATABASE_URL", "mysql://x")],
                "TENANCY_DATABASE_URL",
            ),
            (
                &[("TENANCY_MIGRATION_DATABASE_URL", "http://x")],
                "TENANCY_MIGRATION_DATABASE_URL",
            ),
        ];
        for (pairs, var) in cases {
            let message = error_of(pairs);
            assert!(message.starts_with(var), "{message:?} does not name {var}");
        }
    }

    #[test]
    fn missing_database_url_is_named() {
        let err = Settings::from_env_map(HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("TENANCY_DATABASE_URL is required"), "{err}");
    }

    #[test]
    fn unknown_variables_are_reported_not_fatal() {
        let (_, warnings) = Settings::from_env_map(env(&[
            ("TENANCY_DATABASE_POOLSIZE", "3"),
            ("TENANCY_TEST_DATABASE_URL", "postgres://localhost/postgres"),
        ]))
        .unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("TENANCY_DATABASE_POOLSIZE"));
    }

    #[test]
    fn a_skip_list_is_refused_with_the_reason() {
        // Public routes are the ones outside /api; a list could only get that wrong.
        let (_, warnings) =
            Settings::from_env_map(env(&[("TENANCY_SKIP_PATHS", "/docs")])).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("TENANCY_SKIP_PATHS is ignored: only routes under /api"),
            "{warnings:?}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output_or_errors() {
        let (settings, _) = Settings::from_env_map(env(&[(
            "TENANCY_ADMIN_TOKEN",
            "an-admin-token-that-is-long-enough-1234",
        )]))
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"));
        assert!(!shown.contains("an-admin-token"));
{%- if jwt_resolver %}
        assert!(!shown.contains("jwt-secret"), "{shown}");
        let err = error_of(&[("TENANCY_JWT_SECRET", "short-jwt-secret")]);
        assert!(err.starts_with("TENANCY_JWT_SECRET:"), "{err}");
        assert!(!err.contains("short-jwt-secret"), "{err}");
{%- endif %}
        let err = error_of(&[("TENANCY_DATABASE_URL", "postgres://u:s3cret@h:notaport/db")]);
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(redact_url("postgres://app@db/app"), "postgres://app@db/app");
        assert_eq!(redact_url("postgres://db/app?x=1"), "postgres://db/app?x=1");
        assert_eq!(redact_url("not a url"), "***");
    }

    #[test]
    fn a_config_file_is_read_and_env_wins() {
        let dir = std::env::temp_dir().join(format!("tenancy-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "database_pool_size = 7\nport = 9000\n").unwrap();
        let (settings, _) = Settings::from_env_map(env(&[
            ("TENANCY_CONFIG_FILE", path.to_str().unwrap()),
            ("TENANCY_PORT", "9100"),
        ]))
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(settings.database.pool_size, 7);
        assert_eq!(settings.port, 9100);
    }
}
