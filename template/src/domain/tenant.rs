//! A tenant as the rest of the service sees it, after it was read from the registry.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::TenantIdentifier;

#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    pub id: Uuid,
    pub identifier: TenantIdentifier,
    pub name: String,
    pub status: TenantStatus,
    pub isolation: Isolation,
    pub metadata: serde_json::Value,
    pub limits: TenantLimits,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What one tenant may use, where it differs from the service's settings (`None`: the
/// setting applies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// The most database connections it holds at once (`TENANCY_TENANT_MAX_CONNECTIONS`).
    #[serde(default)]
    pub max_connections: Option<MaxConnections>,
}

/// A tenant's connection limit: 1 to 100,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(try_from = "serde_json::Value", into = "u32")]
pub struct MaxConnections(u32);

impl MaxConnections {
    pub const MAX: u32 = 100_000;

    pub fn get(self) -> u32 {
        self.0
    }

    /// Every refusal names the field, whatever the value was.
    fn refuse(value: impl fmt::Display) -> String {
        format!(
            "max_connections must be a whole number from 1 to {}, not {value}",
            Self::MAX
        )
    }
}

impl TryFrom<i64> for MaxConnections {
    type Error = String;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        match u32::try_from(value) {
            Ok(n @ 1..=Self::MAX) => Ok(Self(n)),
            _ => Err(Self::refuse(value)),
        }
    }
}

impl TryFrom<serde_json::Value> for MaxConnections {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Self, Self::Error> {
        match value.as_i64() {
            Some(n) => n.try_into(),
            None => Err(Self::refuse(value)),
        }
    }
}

impl From<MaxConnections> for u32 {
    fn from(value: MaxConnections) -> Self {
        value.0
    }
}

impl FromStr for MaxConnections {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        value
            .parse::<i64>()
            .map_err(|_| Self::refuse(format!("'{value}'")))?
            .try_into()
    }
}

/// Where a tenant is in its lifecycle. Only `Active` tenants are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
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
        let default: TenantLimits = serde_json::from_str("{}").unwrap();
        assert_eq!(default, TenantLimits::default());
        for bad in [
            r#"{"max_connections": 0}"#,
            r#"{"max_connections": -1}"#,
            r#"{"max_connections": 100001}"#,
            r#"{"max_connections": "5"}"#,
            r#"{"max_conections": 5}"#,
        ] {
            assert!(serde_json::from_str::<TenantLimits>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            "7".parse::<MaxConnections>().map(MaxConnections::get),
            Ok(7)
        );
        assert!("0".parse::<MaxConnections>().is_err());
        assert!("x".parse::<MaxConnections>().is_err());
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
