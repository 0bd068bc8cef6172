//! Settings: defaults, then an optional TOML file (`TENANCY_CONFIG_FILE`), then `TENANCY_*`
//! environment variables, validated once at start-up.
//!
//! Each feature reads and checks its own settings from a [`Source`] (see `settings.rs`):
//! the database in `db::settings`, each resolver and the isolation strategy in their own
//! files, metrics in `metrics`, the admin API in `routes::admin`. This file reads the sources and assembles the
//! parts, plus the HTTP server's own settings. Every error names the variable to fix.
//! Secrets (database URLs, tokens) are held in `SecretString` and never printed.

use std::collections::HashMap;
use std::time::Duration;

use crate::jobs::JobsSettings;
use crate::metrics::MetricsSettings;
{% if admin_api -%}
use crate::routes::admin::AdminSettings;
{% endif -%}
use crate::settings::{ConfigError, Key, Source, var_name};
use crate::tenancy::settings::TenancySettings;

/// Compiled-in strategies; `TENANCY_ISOLATION_STRATEGY` / `TENANCY_RESOLUTION_STRATEGY`, when set, must agree.
pub const ISOLATION_STRATEGY: &str = "{{isolation}}";
pub const RESOLUTION_STRATEGY: &str = "{{resolution}}";

/// The validated settings of one process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub tenancy: TenancySettings,
    pub metrics: MetricsSettings,
    pub jobs: JobsSettings,
{%- if admin_api %}
    pub admin: AdminSettings,
{%- endif %}
}

/// The HTTP server's settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; defaults to the number of CPUs.
    pub workers: Option<usize>,
    pub shutdown_timeout: Duration,
    /// A tenant request's body must arrive within this (`TENANCY_REQUEST_BODY_TIMEOUT`).
    pub body_timeout: Duration,
    /// Error bodies carry internal details (`TENANCY_ERROR_DETAILS`; never in production).
    pub error_details: bool,
    /// `GET /docs` shows the API's document (`TENANCY_API_DOCS`).
    pub api_docs: bool,
}

/// This file's own keys: the HTTP server's, and those that check the sources.
const KEYS: &[Key] = &[
    ("host", Some("0.0.0.0")),
    ("port", Some("8000")),
    ("workers", None),
    ("shutdown_timeout", Some("30")),
    ("request_body_timeout", Some("10")),
    ("error_details", Some("false")),
    ("api_docs", Some("false")),
    ("isolation_strategy", None),
    ("resolution_strategy", None),
    ("config_file", None),
];

/// `TENANCY_*` names that other multi-tenancy libraries read and this service names or
/// handles otherwise: a deployment configured for one of them starts, and is told what
/// changed.
const OTHER_NAMES: &[(&str, Handling)] = &[
    (
        "debug_headers",
        Handling::Renamed(
            "error_details",
            "it adds internals to error bodies, not headers",
        ),
    ),
    (
        "cache_enabled",
        Handling::Ignored(
            "a Redis level of the tenant cache is chosen when the project is generated \
             (redis_cache), and TENANCY_TENANT_CACHE_TTL=0 turns the cache off",
        ),
    ),
    (
        "skip_paths",
        Handling::Ignored(
            "only routes under /api need a tenant; health, metrics and the admin API never \
             do, and a public route belongs outside /api",
        ),
    ),
];

/// What this service does with one of the guide's settings.
enum Handling {
    /// Read as the setting named first, which says better what it does (the reason).
    Renamed(&'static str, &'static str),
    /// Not read, for the reason given.
    Ignored(&'static str),
}

impl Handling {
    fn warning(&self, key: &str) -> String {
        match self {
            Handling::Renamed(to, why) => format!(
                "{} is read as {} ({why}): rename it",
                var_name(key),
                var_name(to)
            ),
            Handling::Ignored(why) => format!("{} is ignored: {why}", var_name(key)),
        }
    }
}

/// Every key this service reads.
fn keys() -> Vec<&'static [Key]> {
    let mut keys = vec![KEYS];
    keys.extend(TenancySettings::keys());
    keys.push(MetricsSettings::KEYS);
    keys.push(JobsSettings::KEYS);
{%- if admin_api %}
    keys.push(AdminSettings::KEYS);
{%- endif %}
    keys
}

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

        let known = keys();
        let mut values = HashMap::new();
        let mut warnings = Vec::new();
        for (key, value) in table {
            let key = key.to_lowercase();
            if key.starts_with("test_") {
                // TENANCY_TEST_* belong to the test suite, not to the service.
                continue;
            }
            if known.iter().flat_map(|k| k.iter()).any(|(k, _)| *k == key) {
                let text = value
                    .into_string()
                    .map_err(|e| ConfigError::invalid(&key, e.to_string()))?;
                values.insert(key, text);
            } else if let Some((_, handling)) = OTHER_NAMES.iter().find(|(k, _)| *k == key) {
                if let Handling::Renamed(to, _) = handling {
                    // Read under its name here; that name wins if both are set.
                    let text = value
                        .into_string()
                        .map_err(|e| ConfigError::invalid(&key, e.to_string()))?;
                    values.entry((*to).to_owned()).or_insert(text);
                }
                warnings.push(handling.warning(&key));
            } else {
                warnings.push(format!(
                    "{} is not a setting of this service and is ignored",
                    var_name(&key)
                ));
            }
        }
        warnings.sort();
        let src = Source::new(values, known);
        Ok((Self::read(&src)?, warnings))
    }

    fn read(src: &Source) -> Result<Self, ConfigError> {
        check_strategy(src, "isolation_strategy", ISOLATION_STRATEGY)?;
        check_strategy(src, "resolution_strategy", RESOLUTION_STRATEGY)?;
        let workers = match src.optional("workers") {
            Some(_) => Some(src.number::<usize>("workers", 1, 1_024)?),
            None => None,
        };
        Ok(Self {
            http: HttpSettings {
                host: src.get("host"),
                port: src.number("port", 0, u16::MAX)?,
                workers,
                shutdown_timeout: src.seconds("shutdown_timeout", 0, 3600)?,
                body_timeout: src.seconds("request_body_timeout", 1, 3600)?,
                error_details: src.boolean("error_details")?,
                api_docs: src.boolean("api_docs")?,
            },
            tenancy: TenancySettings::read(src)?,
            metrics: MetricsSettings::read(src)?,
            jobs: JobsSettings::read(src)?,
{%- if admin_api %}
            admin: AdminSettings::read(src)?,
{%- endif %}
        })
    }
}

/// A strategy named in the environment must be the one compiled in.
fn check_strategy(src: &Source, key: &str, compiled: &str) -> Result<(), ConfigError> {
    match src.optional(key) {
        Some(value) if value != compiled => Err(ConfigError::invalid(
            key,
            format!(
                "this service was generated with '{compiled}'; '{value}' needs a service generated for it"
            ),
        )),
        _ => Ok(()),
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
{%- if redis_cache %}
        map.entry("TENANCY_REDIS_URL".into())
            .or_insert_with(|| "redis://:redis-s3cret@localhost:6379/0".into());
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
        assert_eq!(settings.http.port, 8000);
{%- if header_resolver %}
        assert_eq!(settings.tenancy.resolve.header.name, "X-Tenant-ID");
{%- endif %}
{%- if path_resolver %}
        assert_eq!(settings.tenancy.resolve.path.prefix, "/t");
{%- endif %}
{%- if isolation == "database" %}
        // Ten busy tenants fit under the cap without closing each other's connections.
        assert_eq!(settings.tenancy.database.per_tenant_max(), 4);
        assert_eq!(settings.tenancy.database.max_total_connections, 40);
        let acme = crate::domain::TenantIdentifier::parse("acme").unwrap();
        assert_eq!(
            settings.tenancy.isolation.prefix.name(&acme).as_str(),
            "tenant_acme"
        );
{%- else %}
        // Shared connections: one tenant may hold a quarter of them at most.
        assert_eq!(settings.tenancy.database.per_tenant_max(), 10);
        assert_eq!(settings.tenancy.database.max_total_connections, 40);
{%- endif %}
        assert_eq!(
            settings.tenancy.database.statement_timeout,
            Duration::from_secs(30)
        );
        assert!(!settings.http.error_details);
{%- if admin_api %}
        assert!(settings.admin.token.is_none());
{%- endif %}
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
        assert_eq!(settings.tenancy.database.pool_size, 20);
        assert_eq!(settings.tenancy.database.max_overflow, 10);
        assert_eq!(
            settings.tenancy.database.pool_timeout,
            Duration::from_secs(30)
        );
        // TENANCY_DEBUG_HEADERS, read under this service's name.
        assert!(settings.http.error_details);
    }

    #[test]
    fn one_tenants_share_of_the_connections_is_set_or_derived_from_the_cap() {
        let per_tenant = |vars: &[(&str, &str)]| {
            let (settings, _) = Settings::from_env_map(env(vars)).unwrap();
            settings.tenancy.database.per_tenant_max()
        };
        assert_eq!(per_tenant(&[("TENANCY_TENANT_MAX_CONNECTIONS", "7")]), 7);
        assert_eq!(per_tenant(&[("TENANCY_MAX_TOTAL_CONNECTIONS", "8")]), 2);
        assert_eq!(per_tenant(&[("TENANCY_MAX_TOTAL_CONNECTIONS", "3")]), 1);
        // Never more than the cap itself.
        let capped = [
            ("TENANCY_MAX_TOTAL_CONNECTIONS", "5"),
            ("TENANCY_TENANT_MAX_CONNECTIONS", "9"),
        ];
        assert_eq!(per_tenant(&capped), 5);
        let error = Settings::from_env_map(env(&[("TENANCY_TENANT_MAX_CONNECTIONS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("TENANCY_TENANT_MAX_CONNECTIONS"), "{error}");
    }

    #[test]
    fn another_name_of_error_details_is_read_and_this_services_wins() {
        let (settings, warnings) =
            Settings::from_env_map(env(&[("TENANCY_DEBUG_HEADERS", "true")])).unwrap();
        assert!(settings.http.error_details);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("TENANCY_DEBUG_HEADERS is read as TENANCY_ERROR_DETAILS"),
            "{warnings:?}"
        );
        let (settings, _) = Settings::from_env_map(env(&[
            ("TENANCY_DEBUG_HEADERS", "true"),
            ("TENANCY_ERROR_DETAILS", "false"),
        ]))
        .unwrap();
        assert!(!settings.http.error_details);
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
            (&[("TENANCY_POOLER", "pgbouncer")], "TENANCY_POOLER"),
            (
                &[("TENANCY_LISTEN_DATABASE_URL", "http://x")],
                "TENANCY_LISTEN_DATABASE_URL",
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
    fn the_env_example_lists_every_setting_once_with_its_default() {
        // `TENANCY_<KEY>=<value>`, commented out (`# `) unless it must be set.
        let mut listed: HashMap<String, (bool, String)> = HashMap::new();
        for line in include_str!("../.env.example").lines() {
            let (commented, rest) = match line.strip_prefix("# ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let Some((name, value)) = rest
                .strip_prefix("TENANCY_")
                .and_then(|r| r.split_once('='))
            else {
                continue;
            };
            let key = name.to_lowercase();
            let again = listed.insert(key, (commented, value.to_owned()));
            assert!(again.is_none(), "TENANCY_{name} is listed twice");
        }
        for (key, default) in keys().into_iter().flatten() {
            let var = format!("TENANCY_{}", key.to_uppercase());
            let (commented, value) = listed.remove(*key).unwrap_or_else(|| {
                panic!("{var} is read by the service, missing from .env.example")
            });
            if let Some(default) = default {
                assert!(
                    commented,
                    "{var}: a setting with a default is shown commented out"
                );
                assert_eq!(value, *default, "{var}: .env.example shows another default");
            }
        }
        assert!(
            listed.is_empty(),
            "not read by the service: {:?}",
            listed.keys()
        );
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
    fn the_guides_cache_switch_is_reported_as_ignored() {
        let (_, warnings) =
            Settings::from_env_map(env(&[("TENANCY_CACHE_ENABLED", "true")])).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("TENANCY_CACHE_ENABLED is ignored: a Redis level"),
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
        assert_eq!(settings.tenancy.database.pool_size, 7);
        assert_eq!(settings.http.port, 9100);
    }
}
