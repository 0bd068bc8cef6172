//! Queries of the tenant registry (`tenancy.tenants`). Values always go in bind
//! parameters; these functions never touch a tenant's own tables.

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::dsl::count_star;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::sql_types::Jsonb;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::{
    Bound, Isolation, Limit, Maintenance, ServerAddress, Tenant, TenantIdentifier, TenantLimits,
    TenantStatus,
};
use crate::schema::{quarantine, tenants};

#[derive(Queryable, Selectable)]
#[diesel(table_name = tenants, check_for_backend(diesel::pg::Pg))]
struct TenantRow {
    id: Uuid,
    identifier: String,
    name: String,
    status: String,
    isolation: String,
    metadata: StoredJson,
    max_connections: Option<i32>,
    statement_timeout: Option<i32>,
    rate_limit: Option<i32>,
    rate_limit_burst: Option<i32>,
    maintenance: String,
    server: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = diesel::result::Error;

    fn try_from(row: TenantRow) -> Result<Self, Self::Error> {
        let corrupt = |message: String| diesel::result::Error::DeserializationError(message.into());
        Ok(Tenant {
            id: row.id,
            identifier: TenantIdentifier::parse(&row.identifier).map_err(corrupt)?,
            name: row.name,
            status: row.status.parse().map_err(corrupt)?,
            isolation: row.isolation.parse().map_err(corrupt)?,
            metadata: row.metadata.0.unwrap_or_else(|why| {
                tracing::warn!(
                    tenant = %row.identifier,
                    error = %why,
                    "this tenant's metadata in the registry cannot be decoded: it reads as null \
                     until it is fixed in SQL"
                );
                serde_json::Value::Null
            }),
            limits: TenantLimits {
                max_connections: limit(row.max_connections).map_err(corrupt)?,
                statement_timeout: limit(row.statement_timeout).map_err(corrupt)?,
                rate_limit: limit(row.rate_limit).map_err(corrupt)?,
                rate_limit_burst: limit(row.rate_limit_burst).map_err(corrupt)?,
            },
            maintenance: row.maintenance.parse().map_err(corrupt)?,
            server: row
                .server
                .as_deref()
                .map(ServerAddress::parse)
                .transpose()
                .map_err(corrupt)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A `jsonb` value as the registry holds it, decoded if it can be: PostgreSQL keeps numbers
/// no double can hold (`1e400` written by hand in SQL), so one such row must not make the
/// others unreadable.
#[derive(FromSqlRow)]
#[diesel(sql_type = Jsonb)]
struct StoredJson(Result<serde_json::Value, String>);

impl FromSql<Jsonb, Pg> for StoredJson {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        match value.as_bytes().split_first() {
            Some((1, json)) => Ok(Self(
                serde_json::from_slice(json).map_err(|e| e.to_string()),
            )),
            _ => Err("unsupported jsonb encoding version".into()),
        }
    }
}

/// A limit as the registry holds it (checked there too).
fn limit<T: TryFrom<i64, Error = String>>(value: Option<i32>) -> Result<Option<T>, String> {
    value.map(|n| T::try_from(i64::from(n))).transpose()
}

/// A limit as the registry stores it (every limit is at most 1,000,000: it fits).
fn column<B: Bound>(limit: Option<Limit<B>>) -> Option<i32> {
    limit.map(|n| n.get() as i32)
}

/// The tenant of the row a query found, if it found one.
fn tenant(row: Option<TenantRow>) -> QueryResult<Option<Tenant>> {
    row.map(Tenant::try_from).transpose()
}

pub async fn find_by_identifier(
    conn: &mut AsyncPgConnection,
    identifier: &TenantIdentifier,
) -> QueryResult<Option<Tenant>> {
    tenants::table
        .filter(tenants::identifier.eq(identifier.as_str()))
        .select(TenantRow::as_select())
        .first(conn)
        .await
        .optional()
        .and_then(tenant)
}

/// Every registered identifier, deleted tenants' too.
pub async fn identifiers(conn: &mut AsyncPgConnection) -> QueryResult<Vec<TenantIdentifier>> {
    let rows: Vec<String> = tenants::table
        .select(tenants::identifier)
        .load(conn)
        .await?;
    rows.iter()
        .map(|row| {
            TenantIdentifier::parse(row)
                .map_err(|why| diesel::result::Error::DeserializationError(why.into()))
        })
        .collect()
}

pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Tenant>> {
    tenants::table
        .order(tenants::identifier)
        .select(TenantRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(Tenant::try_from)
        .collect()
}

/// Inserts a `provisioning` row unless the identifier exists; returns the row either way.
pub async fn insert_or_get(
    conn: &mut AsyncPgConnection,
    identifier: &TenantIdentifier,
    name: &str,
    isolation: Isolation,
    metadata: &serde_json::Value,
    server: Option<&ServerAddress>,
) -> QueryResult<Tenant> {
    diesel::insert_into(tenants::table)
        .values((
            tenants::id.eq(Uuid::new_v4()),
            tenants::identifier.eq(identifier.as_str()),
            tenants::name.eq(name),
            tenants::status.eq(TenantStatus::Provisioning.as_str()),
            tenants::isolation.eq(isolation.as_str()),
            tenants::metadata.eq(metadata),
            tenants::server.eq(server.map(ServerAddress::as_str)),
        ))
        .on_conflict(tenants::identifier)
        .do_nothing()
        .execute(conn)
        .await?;
    find_by_identifier(conn, identifier)
        .await?
        .ok_or(diesel::result::Error::NotFound)
}

/// Waits until every other creation that counts or places tenants has ended: what this
/// transaction reads of the registry then holds until its insert (a lock held until the
/// connection's transaction ends).
pub async fn lock_creations(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('tenancy.tenants.create'))")
        .execute(conn)
        .await
        .map(drop)
}

/// How many tenants the registry holds, in any status, once every other creation that
/// counts has ended: the count and the insert that follows are one at a time.
pub async fn count_for_creation(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    lock_creations(conn).await?;
    tenants::table.count().get_result(conn).await
}

/// Moves a tenant to `to` if its status is one of `from`; `None` if it was not.
pub async fn transition(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: &[TenantStatus],
    to: TenantStatus,
) -> QueryResult<Option<Tenant>> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    diesel::update(tenants::table)
        .filter(tenants::id.eq(id))
        .filter(tenants::status.eq_any(from))
        .set((
            tenants::status.eq(to.as_str()),
            tenants::updated_at.eq(diesel::dsl::now),
        ))
        .returning(TenantRow::as_returning())
        .get_result(conn)
        .await
        .optional()
        .and_then(tenant)
}

/// Sets a tenant's own limits; `None` if there is no tenant `id`.
pub async fn set_limits(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    limits: &TenantLimits,
) -> QueryResult<Option<Tenant>> {
    diesel::update(tenants::table)
        .filter(tenants::id.eq(id))
        .set((
            tenants::max_connections.eq(column(limits.max_connections)),
            tenants::statement_timeout.eq(column(limits.statement_timeout)),
            tenants::rate_limit.eq(column(limits.rate_limit)),
            tenants::rate_limit_burst.eq(column(limits.rate_limit_burst)),
        ))
        .returning(TenantRow::as_returning())
        .get_result(conn)
        .await
        .optional()
        .and_then(tenant)
}

/// Sets whether a tenant takes writes; `None` if there is no tenant `id`.
pub async fn set_maintenance(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    mode: Maintenance,
) -> QueryResult<Option<Tenant>> {
    diesel::update(tenants::table)
        .filter(tenants::id.eq(id))
        .set(tenants::maintenance.eq(mode.as_str()))
        .returning(TenantRow::as_returning())
        .get_result(conn)
        .await
        .optional()
        .and_then(tenant)
}

/// Sets tenant `id`'s maintenance to `to` if it is `from` (`migrate` marks `off` tenants
/// `migrating`, and only those); the tenant, if it was switched.
pub async fn switch_maintenance(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: Maintenance,
    to: Maintenance,
) -> QueryResult<Option<Tenant>> {
    diesel::update(tenants::table)
        .filter(tenants::id.eq(id))
        .filter(tenants::maintenance.eq(from.as_str()))
        .set(tenants::maintenance.eq(to.as_str()))
        .returning(TenantRow::as_returning())
        .get_result(conn)
        .await
        .optional()
        .and_then(tenant)
}

pub async fn delete_row(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::delete(tenants::table.filter(tenants::id.eq(id)))
        .execute(conn)
        .await
}

/// Refuses `tenant`'s identifier to new tenants for `days` days from now.
pub async fn quarantine(
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
    days: u32,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO tenancy.quarantine (identifier, tenant_id, until) \
         VALUES ($1, $2, now() + make_interval(days => $3)) \
         ON CONFLICT (identifier) DO UPDATE \
         SET tenant_id = excluded.tenant_id, destroyed_at = excluded.destroyed_at, \
             until = excluded.until",
    )
    .bind::<diesel::sql_types::Text, _>(tenant.identifier.as_str())
    .bind::<diesel::sql_types::Uuid, _>(tenant.id)
    .bind::<diesel::sql_types::Integer, _>(i32::try_from(days).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Until when `identifier` is refused to a new tenant, if it still is.
pub async fn quarantined_until(
    conn: &mut AsyncPgConnection,
    identifier: &TenantIdentifier,
) -> QueryResult<Option<DateTime<Utc>>> {
    quarantine::table
        .filter(quarantine::identifier.eq(identifier.as_str()))
        .filter(quarantine::until.gt(diesel::dsl::now))
        .select(quarantine::until)
        .first(conn)
        .await
        .optional()
}

/// Ends `identifier`'s quarantine; whether it was quarantined.
pub async fn release(
    conn: &mut AsyncPgConnection,
    identifier: &TenantIdentifier,
) -> QueryResult<bool> {
    let removed =
        diesel::delete(quarantine::table.filter(quarantine::identifier.eq(identifier.as_str())))
            .execute(conn)
            .await?;
    Ok(removed > 0)
}

/// How many tenants are in each status.
pub async fn count_by_status(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(String, i64)>> {
    tenants::table
        .group_by(tenants::status)
        .select((tenants::status, count_star()))
        .load(conn)
        .await
}
