//! The audit trail (`tenancy.audit`): one row per lifecycle operation, with who ran it,
//! on which tenant, with what (never a secret), how it ended and how long it took.
//! Rows are only ever added: the application role may insert and read them, and a
//! trigger refuses every change or removal (see the control migration).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::TenantIdentifier;
use crate::schema::audit;

/// Who runs an operation, as the audit trail names them: `api:<admin token name>`,
/// `cli:<OS user>` or `migrate:<OS user>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// A request of the admin API, made with the token named `token_name`.
    pub fn api(token_name: &str) -> Self {
        Self(format!("api:{token_name}"))
    }

    /// A `tenant ...` command, run by the current OS user.
    pub fn cli() -> Self {
        Self(format!("cli:{}", os_user()))
    }

    /// `migrate`, run by the current OS user (a Job's container user, say).
    pub fn migrate() -> Self {
        Self(format!("migrate:{}", os_user()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The user running this process (`USER`, else `LOGNAME`), `unknown` when neither is set
/// (as in many containers).
fn os_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .map(|user| user.chars().take(64).collect())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A lifecycle operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Suspend,
    Activate,
    Delete,
    Destroy,
    Limits,
    Maintenance,
    Migrate,
    Release,
    JobRetry,
    JobCancel,
    Move,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Suspend => "suspend",
            Self::Activate => "activate",
            Self::Delete => "delete",
            Self::Destroy => "destroy",
            Self::Limits => "limits",
            Self::Maintenance => "maintenance",
            Self::JobRetry => "job_retry",
            Self::JobCancel => "job_cancel",
            Self::Migrate => "migrate",
            Self::Release => "release",
            Self::Move => "move",
        }
    }
}

/// How an operation ended: `ok`; `refused` (the request was wrong: unknown tenant, a
/// conflict, bad input); `failed` (the service or its database failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Refused,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// One operation to record.
pub struct Record<'a> {
    pub actor: &'a Actor,
    pub tenant_id: Option<Uuid>,
    pub identifier: &'a TenantIdentifier,
    pub operation: Operation,
    pub params: serde_json::Value,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub duration: std::time::Duration,
}

/// Appends `record` to the trail. Refused input is recorded too: a NUL character, which
/// PostgreSQL cannot store, is recorded as U+FFFD.
pub async fn append(conn: &mut AsyncPgConnection, record: Record<'_>) -> QueryResult<()> {
    diesel::insert_into(audit::table)
        .values((
            audit::actor.eq(record.actor.as_str()),
            audit::tenant_id.eq(record.tenant_id),
            audit::identifier.eq(record.identifier.as_str()),
            audit::operation.eq(record.operation.as_str()),
            audit::params.eq(crate::domain::storable_json(record.params)),
            audit::result.eq(record.outcome.as_str()),
            audit::error.eq(record.error.map(crate::domain::storable_text)),
            audit::duration_ms.eq(i64::try_from(record.duration.as_millis()).unwrap_or(i64::MAX)),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// One row of the trail, as `tenant history` and the admin API show it.
#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = audit, check_for_backend(diesel::pg::Pg))]
#[schema(as = AuditEntry)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// The tenant's id when it was known (not for a tenant that was never found).
    pub tenant_id: Option<Uuid>,
    pub identifier: String,
    pub operation: String,
    pub params: serde_json::Value,
    pub result: String,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// The operations recorded under `identifier` (every tenant that had it, destroyed ones
/// too), newest first: at most `limit`, older than entry `before` when given.
pub async fn history(
    conn: &mut AsyncPgConnection,
    identifier: &TenantIdentifier,
    limit: i64,
    before: Option<i64>,
) -> QueryResult<Vec<Entry>> {
    let mut query = audit::table
        .filter(audit::identifier.eq(identifier.as_str()))
        .order(audit::id.desc())
        .limit(limit)
        .select(Entry::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(audit::id.lt(before));
    }
    query.load(conn).await
}
