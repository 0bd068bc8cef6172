//! The job queue's statements (`tenancy.jobs`, `tenancy.job_turns`), on a connection of
//! the control pool. Values always go in bind parameters.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Interval, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use uuid::Uuid;

use crate::schema::jobs;

/// Where a job is in its life (see the control migration that creates `tenancy.jobs`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    serde::Deserialize,
    diesel::deserialize::FromSqlRow,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Done,
        Self::Dead,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Read from the table, whose CHECK allows only these.
impl diesel::deserialize::FromSql<Text, diesel::pg::Pg> for JobState {
    fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let text = <String as diesel::deserialize::FromSql<Text, diesel::pg::Pg>>::from_sql(value)?;
        Ok(text.parse()?)
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!("'{s}' is not a job state (queued, running, done, dead, cancelled)")
            })
    }
}

/// A stored job.
#[derive(Debug, Clone, Serialize, Queryable, Selectable, QueryableByName, utoipa::ToSchema)]
#[diesel(table_name = jobs, check_for_backend(diesel::pg::Pg))]
pub struct JobRecord {
    pub id: i64,
    pub tenant_id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    /// The running attempt's token (internal).
    #[serde(skip)]
    pub lease: Option<Uuid>,
    pub result: Option<serde_json::Value>,
    pub last_error: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job to insert.
pub struct NewJob {
    pub tenant_id: Uuid,
    pub queue: &'static str,
    pub kind: &'static str,
    pub payload: serde_json::Value,
    pub max_attempts: i32,
    pub run_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
}

/// Inserts `new` and makes its tenant's turn ready, in one statement (a worker never sees
/// the one without the other); with an idempotency key the tenant already used, the job
/// that has it (and `false`).
pub async fn insert(conn: &mut AsyncPgConnection, new: NewJob) -> QueryResult<(JobRecord, bool)> {
    let inserted: Option<JobRecord> = diesel::sql_query(
        "WITH turn AS ( \
           INSERT INTO tenancy.job_turns (tenant_id) VALUES ($1) \
           ON CONFLICT (tenant_id) DO UPDATE SET ready = true WHERE NOT tenancy.job_turns.ready) \
         INSERT INTO tenancy.jobs \
           (tenant_id, queue, kind, payload, max_attempts, run_at, idempotency_key) \
         VALUES ($1, $2, $3, $4, $5, coalesce($6, now()), $7) \
         ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
         RETURNING *",
    )
    .bind::<diesel::sql_types::Uuid, _>(new.tenant_id)
    .bind::<Text, _>(new.queue)
    .bind::<Text, _>(new.kind)
    .bind::<diesel::sql_types::Jsonb, _>(&new.payload)
    .bind::<diesel::sql_types::Integer, _>(new.max_attempts)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>, _>(new.run_at)
    .bind::<diesel::sql_types::Nullable<Text>, _>(&new.idempotency_key)
    .get_result(conn)
    .await
    .optional()?;
    if let Some(job) = inserted {
        return Ok((job, true));
    }
    let first = jobs::table
        .filter(jobs::tenant_id.eq(new.tenant_id))
        .filter(jobs::idempotency_key.eq(&new.idempotency_key))
        .select(JobRecord::as_select())
        .first(conn)
        .await?;
    Ok((first, false))
}

/// The next job to run, now running under a lease of `lease` (see `tenancy.claim_job`),
/// with its tenant's identifier.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    lease: Duration,
) -> QueryResult<Option<(JobRecord, String)>> {
    diesel::sql_query(
        "SELECT j.*, t.identifier FROM tenancy.claim_job($1) j \
         JOIN tenancy.tenants t ON t.id = j.tenant_id",
    )
    .bind::<Interval, _>(interval(lease))
    .get_result::<Claimed>(conn)
    .await
    .optional()
    .map(|claimed| claimed.map(|c| (c.job, c.identifier)))
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(embed)]
    job: JobRecord,
    #[diesel(sql_type = Text)]
    identifier: String,
}

/// Ends the attempt under `lease` with success. `false`: the lease was lost (it expired
/// and the job went back to the queue), so nothing was recorded.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    id: i64,
    lease: Uuid,
    result: &serde_json::Value,
) -> QueryResult<bool> {
    diesel::update(
        jobs::table
            .filter(jobs::id.eq(id))
            .filter(jobs::lease.eq(lease))
            .filter(jobs::state.eq(JobState::Running.as_str())),
    )
    .set((
        jobs::state.eq(JobState::Done.as_str()),
        jobs::result.eq(result),
        jobs::lease.eq(None::<Uuid>),
        jobs::locked_until.eq(None::<DateTime<Utc>>),
        jobs::finished_at.eq(Some(Utc::now())),
    ))
    .execute(conn)
    .await
    .map(|n| n == 1)
}

/// Ends the attempt under `lease` with `error`: the job is queued again to run after
/// `retry_in`, or dead if that was its last attempt. `Some(state)`: what it became;
/// `None`: the lease was lost.
pub async fn fail(
    conn: &mut AsyncPgConnection,
    id: i64,
    lease: Uuid,
    error: &str,
    retry_in: Duration,
) -> QueryResult<Option<JobState>> {
    diesel::sql_query(
        "UPDATE tenancy.jobs SET \
           state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
           run_at = CASE WHEN attempts >= max_attempts THEN run_at ELSE now() + $3 END, \
           finished_at = CASE WHEN attempts >= max_attempts THEN now() END, \
           last_error = $4, lease = NULL, locked_until = NULL \
         WHERE id = $1 AND lease = $2 AND state = 'running' \
         RETURNING state",
    )
    .bind::<BigInt, _>(id)
    .bind::<diesel::sql_types::Uuid, _>(lease)
    .bind::<Interval, _>(interval(retry_in))
    .bind::<Text, _>(error)
    .get_result::<StateRow>(conn)
    .await
    .optional()
    .map(|row| row.map(|row| row.state))
}

/// Gives the attempt under `lease` back, as if it had not started (shutting down, or the
/// tenant stopped being served between the claim and the run): queued, due now.
pub async fn release(conn: &mut AsyncPgConnection, id: i64, lease: Uuid) -> QueryResult<bool> {
    diesel::update(
        jobs::table
            .filter(jobs::id.eq(id))
            .filter(jobs::lease.eq(lease))
            .filter(jobs::state.eq(JobState::Running.as_str())),
    )
    .set((
        jobs::state.eq(JobState::Queued.as_str()),
        jobs::attempts.eq(jobs::attempts - 1),
        jobs::run_at.eq(diesel::dsl::now),
        jobs::lease.eq(None::<Uuid>),
        jobs::locked_until.eq(None::<DateTime<Utc>>),
    ))
    .execute(conn)
    .await
    .map(|n| n == 1)
}

/// Renews the lease of a running attempt for `lease_for`. `false`: lost.
pub async fn renew(
    conn: &mut AsyncPgConnection,
    id: i64,
    lease: Uuid,
    lease_for: Duration,
) -> QueryResult<bool> {
    diesel::sql_query(
        "UPDATE tenancy.jobs SET locked_until = now() + $3 \
         WHERE id = $1 AND lease = $2 AND state = 'running'",
    )
    .bind::<BigInt, _>(id)
    .bind::<diesel::sql_types::Uuid, _>(lease)
    .bind::<Interval, _>(interval(lease_for))
    .execute(conn)
    .await
    .map(|n| n == 1)
}

/// Housekeeping, run by every worker process now and then: running jobs whose lease
/// expired (their worker stopped) are queued again, or dead after their last attempt;
/// tenants with a job come due (scheduled, or a retry) are made ready; jobs that ended
/// more than `retention` ago are deleted. Returns the jobs whose lease expired.
pub async fn tidy(conn: &mut AsyncPgConnection, retention: Duration) -> QueryResult<usize> {
    let expired: Count = diesel::sql_query(
        "WITH expired AS ( \
           UPDATE tenancy.jobs SET \
             state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
             finished_at = CASE WHEN attempts >= max_attempts THEN now() END, \
             run_at = now(), lease = NULL, locked_until = NULL, \
             last_error = 'its worker stopped while it ran (the lease expired)' \
           WHERE state = 'running' AND locked_until < now() RETURNING tenant_id), \
         due AS ( \
           UPDATE tenancy.job_turns s SET ready = true WHERE NOT s.ready AND ( \
             s.tenant_id IN (SELECT tenant_id FROM expired) OR EXISTS ( \
               SELECT 1 FROM tenancy.jobs q \
               WHERE q.tenant_id = s.tenant_id AND q.state = 'queued' AND q.run_at <= now()))) \
         SELECT count(*) AS n FROM expired",
    )
    .get_result(conn)
    .await?;
    diesel::sql_query(
        "DELETE FROM tenancy.jobs \
         WHERE state IN ('done', 'cancelled') AND finished_at < now() - $1",
    )
    .bind::<Interval, _>(interval(retention))
    .execute(conn)
    .await?;
    Ok(usize::try_from(expired.n).unwrap_or_default())
}

/// `tenant`'s jobs, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    state: Option<JobState>,
    limit: i64,
    before: Option<i64>,
) -> QueryResult<Vec<JobRecord>> {
    let mut query = jobs::table
        .filter(jobs::tenant_id.eq(tenant))
        .select(JobRecord::as_select())
        .order(jobs::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(state) = state {
        query = query.filter(jobs::state.eq(state.as_str()));
    }
    if let Some(before) = before {
        query = query.filter(jobs::id.lt(before));
    }
    query.load(conn).await
}

/// `tenant`'s job `id`.
pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    id: i64,
) -> QueryResult<Option<JobRecord>> {
    jobs::table
        .filter(jobs::tenant_id.eq(tenant))
        .filter(jobs::id.eq(id))
        .select(JobRecord::as_select())
        .first(conn)
        .await
        .optional()
}

/// Queues `tenant`'s job `id` again, due now with every attempt back, if it is dead or
/// cancelled (or queued: then it is due now). `None`: no such job, or one that is running
/// or done.
pub async fn retry(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    id: i64,
) -> QueryResult<Option<JobRecord>> {
    let retried = diesel::update(
        jobs::table
            .filter(jobs::tenant_id.eq(tenant))
            .filter(jobs::id.eq(id))
            .filter(jobs::state.eq_any([
                JobState::Dead.as_str(),
                JobState::Cancelled.as_str(),
                JobState::Queued.as_str(),
            ])),
    )
    .set((
        jobs::state.eq(JobState::Queued.as_str()),
        jobs::attempts.eq(0),
        jobs::run_at.eq(diesel::dsl::now),
        jobs::finished_at.eq(None::<DateTime<Utc>>),
    ))
    .returning(JobRecord::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    if retried.is_some() {
        diesel::sql_query("UPDATE tenancy.job_turns SET ready = true WHERE tenant_id = $1")
            .bind::<diesel::sql_types::Uuid, _>(tenant)
            .execute(conn)
            .await?;
    }
    Ok(retried)
}

/// Cancels `tenant`'s job `id` if it is queued or dead. `None`: no such job, or one that
/// is running or has ended.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    id: i64,
) -> QueryResult<Option<JobRecord>> {
    diesel::update(
        jobs::table
            .filter(jobs::tenant_id.eq(tenant))
            .filter(jobs::id.eq(id))
            .filter(jobs::state.eq_any([JobState::Queued.as_str(), JobState::Dead.as_str()])),
    )
    .set((
        jobs::state.eq(JobState::Cancelled.as_str()),
        jobs::finished_at.eq(Some(Utc::now())),
    ))
    .returning(JobRecord::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Jobs waiting (never tried, or failed and to be retried), running and dead, and the age in
/// seconds of the oldest job due (queued and past its `run_at`), per queue: what
/// `/metrics` shows.
pub async fn counts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<QueueCount>> {
    diesel::sql_query(
        "SELECT queue, \
           count(*) FILTER (WHERE state = 'queued' AND attempts = 0) AS queued, \
           count(*) FILTER (WHERE state = 'queued' AND attempts > 0) AS failed, \
           count(*) FILTER (WHERE state = 'running') AS running, \
           count(*) FILTER (WHERE state = 'dead') AS dead, \
           coalesce(extract(epoch FROM now() - min(run_at) \
             FILTER (WHERE state = 'queued' AND run_at <= now())), 0)::float8 AS oldest_due_seconds \
         FROM tenancy.jobs WHERE state IN ('queued', 'running', 'dead') \
         GROUP BY queue ORDER BY queue",
    )
    .load(conn)
    .await
}

/// One queue's row of [`counts`].
#[derive(Debug, Clone, QueryableByName)]
pub struct QueueCount {
    #[diesel(sql_type = Text)]
    pub queue: String,
    #[diesel(sql_type = BigInt)]
    pub queued: i64,
    #[diesel(sql_type = BigInt)]
    /// Queued again after a failed attempt.
    pub failed: i64,
    #[diesel(sql_type = BigInt)]
    pub running: i64,
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
    #[diesel(sql_type = Double)]
    pub oldest_due_seconds: f64,
}

#[derive(QueryableByName)]
struct StateRow {
    #[diesel(sql_type = Text)]
    state: JobState,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// `duration` as a PostgreSQL interval (microseconds).
fn interval(duration: Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(
        i64::try_from(duration.as_micros()).unwrap_or(i64::MAX),
    )
}
