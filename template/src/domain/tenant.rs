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
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
