//! A tenant as the rest of the service sees it, after it was read from the registry.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{ServerAddress, TenantIdentifier};

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub identifier: TenantIdentifier,
    pub name: String,
    pub status: TenantStatus,
    pub isolation: Isolation,
    /// A JSON object; `null` when the registry holds a value that cannot be decoded (only
    /// SQL written by hand can store one: see [`Tenant::metadata_undecodable`]).
    #[schema(value_type = Option<Object>)]
    pub metadata: serde_json::Value,
    pub limits: TenantLimits,
    pub maintenance: Maintenance,
    /// The PostgreSQL server its data is on (`host[:port]`, one of
    /// `TENANCY_DATABASE_SERVERS`); `null`: the default server.
    #[schema(value_type = Option<String>)]
    pub server: Option<ServerAddress>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Tenant {
    /// Whether the registry's metadata of this tenant could not be decoded (it reads as
    /// `null`, which no creation stores). The tenant still serves, lists and migrates.
    pub fn metadata_undecodable(&self) -> bool {
        self.metadata.is_null()
    }
}

/// What one tenant may use, where it differs from the service's settings (`None`: the
/// setting applies).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// The most database connections it holds at once (`TENANCY_TENANT_MAX_CONNECTIONS`).
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    pub max_connections: Option<MaxConnections>,
    /// Seconds after which PostgreSQL cancels one of its statements
    /// (`TENANCY_STATEMENT_TIMEOUT`).
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 86400)]
    pub statement_timeout: Option<StatementTimeout>,
    /// Requests a second it may send (`TENANCY_RATE_LIMIT`).
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    pub rate_limit: Option<RateLimit>,
    /// Requests it may send at once (`TENANCY_RATE_LIMIT_BURST`; default: its rate).
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    pub rate_limit_burst: Option<RateLimitBurst>,
}

/// A tenant's connection limit: 1 to 100,000.
pub type MaxConnections = Limit<Connections>;

/// A tenant's statement timeout in seconds: 1 to 86,400 (a day).
pub type StatementTimeout = Limit<Seconds>;

/// A tenant's request rate, per second: 1 to 1,000,000.
pub type RateLimit = Limit<PerSecond>;

/// How many requests a tenant may send at once: 1 to 1,000,000.
pub type RateLimitBurst = Limit<Burst>;

/// What one kind of [`Limit`] is called, and how large it may be.
pub trait Bound {
    const FIELD: &'static str;
    const MAX: u32;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connections;

impl Bound for Connections {
    const FIELD: &'static str = "max_connections";
    const MAX: u32 = 100_000;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seconds;

impl Bound for Seconds {
    const FIELD: &'static str = "statement_timeout";
    const MAX: u32 = 86_400;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerSecond;

impl Bound for PerSecond {
    const FIELD: &'static str = "rate_limit";
    const MAX: u32 = 1_000_000;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst;

impl Bound for Burst {
    const FIELD: &'static str = "rate_limit_burst";
    const MAX: u32 = 1_000_000;
}

/// A whole number from 1 to `B::MAX`; every refusal names the field, whatever the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(
    try_from = "serde_json::Value",
    into = "u32",
    bound = "B: Bound + Clone"
)]
pub struct Limit<B>(u32, std::marker::PhantomData<B>);

impl<B: Bound> Limit<B> {
    pub fn get(self) -> u32 {
        self.0
    }

    fn refuse(value: impl fmt::Display) -> String {
        format!(
            "{} must be a whole number from 1 to {}, not {value}",
            B::FIELD,
            B::MAX
        )
    }
}

impl<B: Bound> TryFrom<i64> for Limit<B> {
    type Error = String;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        match u32::try_from(value) {
            Ok(n) if (1..=B::MAX).contains(&n) => Ok(Self(n, std::marker::PhantomData)),
            _ => Err(Self::refuse(value)),
        }
    }
}

impl<B: Bound> TryFrom<serde_json::Value> for Limit<B> {
    type Error = String;

    /// A whole number, written `20` or `20.0` (JSON does not tell them apart).
    fn try_from(value: serde_json::Value) -> Result<Self, Self::Error> {
        let whole = value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        });
        match whole {
            Some(n) => n.try_into(),
            None => Err(Self::refuse(value)),
        }
    }
}

impl<B> From<Limit<B>> for u32 {
    fn from(value: Limit<B>) -> Self {
        value.0
    }
}

impl<B: Bound> FromStr for Limit<B> {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        value
            .parse::<i64>()
            .map_err(|_| Self::refuse(format!("'{value}'")))?
            .try_into()
    }
}

/// Whether a served tenant takes writes: `read_only` while an operator changes it (a move,
/// a repair), `migrating` while `migrate` changes its storage; requests that write then
/// get 503 with `Retry-After`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Maintenance {
    #[default]
    Off,
    ReadOnly,
    /// Set and ended by `migrate` alone, and only on a tenant whose maintenance was `off`.
    Migrating,
    /// Set and ended by `tenant move` alone, while the tenant's data is copied.
    Moving,
}

impl Maintenance {
    pub const ALL: &[Maintenance] = &[
        Maintenance::Off,
        Maintenance::ReadOnly,
        Maintenance::Migrating,
        Maintenance::Moving,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Maintenance::Off => "off",
            Maintenance::ReadOnly => "read_only",
            Maintenance::Migrating => "migrating",
            Maintenance::Moving => "moving",
        }
    }

    /// Whether requests that write are served.
    pub fn takes_writes(self) -> bool {
        self == Maintenance::Off
    }
}

impl fmt::Display for Maintenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Maintenance {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|mode| mode.as_str() == value)
            .ok_or_else(|| format!("unknown maintenance mode '{value}' (read_only or off)"))
    }
}

/// Where a tenant is in its lifecycle. Only `Active` tenants are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// Created in the registry, storage not (fully) provisioned yet; a retry completes it.
    Provisioning,
    Active,
    Suspended,
    /// Soft-deleted: not served, data kept until `destroy`.
    Deleted,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 4] = [
        TenantStatus::Provisioning,
        TenantStatus::Active,
        TenantStatus::Suspended,
        TenantStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
        }
    }
}

/// How a tenant's data is isolated, as recorded on its registry row.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own schema.
    Schema,
    /// Shared tables under Row-Level Security.
    Rls,
    /// Its own database.
    Database,
}

impl Isolation {
    pub const ALL: [Isolation; 3] = [Isolation::Schema, Isolation::Rls, Isolation::Database];

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Schema => "schema",
            Isolation::Rls => "rls",
            Isolation::Database => "database",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Isolation {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|isolation| isolation.as_str() == value)
            .ok_or_else(|| format!("unknown isolation '{value}' (schema, rls or database)"))
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for TenantStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| format!("unknown tenant status '{value}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_only_what_the_registry_accepts() {
        let limits: TenantLimits = serde_json::from_str(r#"{"max_connections": 5}"#).unwrap();
        assert_eq!(limits.max_connections.map(MaxConnections::get), Some(5));
        // JSON does not tell 5 from 5.0 (nor does the API's schema, `integer`).
        let limits: TenantLimits = serde_json::from_str(r#"{"max_connections": 5.0}"#).unwrap();
        assert_eq!(limits.max_connections.map(MaxConnections::get), Some(5));
        let default: TenantLimits = serde_json::from_str("{}").unwrap();
        assert_eq!(default, TenantLimits::default());
        for bad in [
            r#"{"max_connections": 0}"#,
            r#"{"max_connections": -1}"#,
            r#"{"max_connections": 100001}"#,
            r#"{"max_connections": "5"}"#,
            r#"{"max_conections": 5}"#,
            r#"{"statement_timeout": 86401}"#,
            r#"{"statement_timeout": 1.5}"#,
            r#"{"statement_timeout": 1e300}"#,
        ] {
            assert!(serde_json::from_str::<TenantLimits>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            "7".parse::<MaxConnections>().map(MaxConnections::get),
            Ok(7)
        );
        assert!("0".parse::<MaxConnections>().is_err());
        assert!("x".parse::<MaxConnections>().is_err());
        let limits: TenantLimits = serde_json::from_str(r#"{"statement_timeout": 2}"#).unwrap();
        assert_eq!(limits.statement_timeout.map(StatementTimeout::get), Some(2));
        let refused = "0".parse::<StatementTimeout>().unwrap_err();
        assert!(
            refused.starts_with("statement_timeout must be"),
            "{refused}"
        );
    }

    #[test]
    fn maintenance_modes_round_trip_through_text_and_json() {
        for &mode in Maintenance::ALL {
            assert_eq!(mode.as_str().parse::<Maintenance>(), Ok(mode));
            let json = serde_json::to_value(mode).unwrap();
            assert_eq!(json, mode.as_str());
        }
        assert!("readonly".parse::<Maintenance>().is_err());
    }

    #[test]
    fn status_round_trips_through_text() {
        for status in TenantStatus::ALL {
            assert_eq!(status.as_str().parse::<TenantStatus>(), Ok(status));
        }
        assert!("archived".parse::<TenantStatus>().is_err());
    }

    #[test]
    fn isolation_round_trips_through_text() {
        for isolation in Isolation::ALL {
            assert_eq!(isolation.as_str().parse::<Isolation>(), Ok(isolation));
        }
        assert!("Schema".parse::<Isolation>().is_err());
    }
}
