//! Moving a tenant's data to another server (`tenant move`), step by step: what every
//! placing strategy does to move its tenants ([`Relocate`]), and the record of a move
//! under way (`tenancy.tenant_moves`) through which an interrupted one is resumed.

use std::time::Duration;

use diesel::OptionalExtension;
use diesel::sql_types::{Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::copy::{TableCopy, begin_locked};
use super::{Context, ServerAddress, server_name};
use crate::db::connect::PgConn;
use crate::db::migrate::MigrateError;
use crate::domain::{SqlIdentifier, Tenant};

/// Why a tenant could not be placed on a server, or moved there.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The tenant is already placed on another server.
    #[error("{0}")]
    Conflict(String),
    /// The server asked for is not in `TENANCY_DATABASE_SERVERS`, or the recorded one is
    /// not a server address (a registry edited by hand).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    /// Copying the tenant's data to another server failed (`tenant move`).
    #[error("{0}")]
    Copy(String),
    /// The tenant's tables were held by a transaction that did not end in time: the move
    /// was given up, nothing changed; it may be tried again.
    #[error("{0}")]
    Busy(String),
}

/// The steps of a move between servers, each safe to repeat; `tenancy::moves` runs them
/// in this order, with the tenant read-only from `copy_and_switch` to `close_old`.
pub trait Relocate {
    /// What is moved, in words: `schema`, `database`.
    fn storage(&self) -> &'static str;

    /// What a move of `tenant` between servers left unfinished, if one is under way or
    /// stopped partway (running the same `tenant move` again finishes it). `conn`: any
    /// connection to the control database (the application role may read the moves).
    fn unfinished_move(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> impl Future<Output = Result<Option<String>, PlaceError>>;

    /// Starts moving `tenant` to `to` (`None`: the default server), or finds the move of
    /// it under way to the same place (to resume). Refused: a tenant already there, a
    /// server not listed, a move under way elsewhere, storage of that name already on `to`.
    fn start_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        to: Option<&ServerAddress>,
    ) -> impl Future<Output = Result<Move, PlaceError>>;

    /// Creates the move's copy on its target, with the tenant tables and nothing in them
    /// (before the tenant is read-only: this takes a while); a copy left by an
    /// interrupted attempt is dropped first.
    fn prepare_copy(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> impl Future<Output = Result<(), PlaceError>>;

    /// Copies the tenant's tables into the copy `prepare_copy` made while they are held
    /// against writes (reads go on), seals the source so that no write lands there
    /// whichever replica sends it, then points the registry at the target.
    /// `lock_within`: how long to wait for the writes under way.
    fn copy_and_switch(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
        lock_within: Duration,
    ) -> impl Future<Output = Result<Vec<TableCopy>, PlaceError>>;

    /// After the switch: the application role can no longer read or write the old copy,
    /// so every replica serves the new place only.
    fn close_old(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> impl Future<Output = Result<(), PlaceError>>;

    /// Ends a switched move: drops the old copy and the move's record.
    fn finish_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> impl Future<Output = Result<(), PlaceError>>;

    /// Gives up a move that has not switched: the tenant stays where it is and takes
    /// writes there again; the copy is dropped.
    fn abandon_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> impl Future<Output = Result<(), PlaceError>>;
}

/// A move of a tenant's data under way (`tenancy.tenant_moves`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Where the tenant's data was when the move started (`None`: the default server).
    pub from: Option<ServerAddress>,
    pub to: Option<ServerAddress>,
    /// Whether the registry names `to` already (what is left: dropping the old copy).
    pub switched: bool,
    /// The tenant's schema or database, of the same name on both servers (the shared
    /// tables' schema for its rows).
    pub(crate) storage: SqlIdentifier,
    /// When the move started, as PostgreSQL wrote it (it names the move's copy).
    started: String,
}

impl Move {
    /// What the move left unfinished, in words.
    pub(crate) fn unfinished(&self) -> String {
        format!(
            "its move to {} is not finished",
            server_name(self.to.as_ref())
        )
    }
{%- if isolation != "rls" %}

    /// The comment on the move's copy: a resumed move drops only a copy it made.
    pub(crate) fn marker(&self) -> String {
        format!("tenant move started {}", self.started)
    }
{%- endif %}
}

#[derive(diesel::QueryableByName)]
struct MoveRow {
    #[diesel(sql_type = Nullable<Text>)]
    from_server: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    to_server: Option<String>,
    #[diesel(sql_type = Text)]
    step: String,
    #[diesel(sql_type = Text)]
    started: String,
}

/// The move of `tenant`'s `storage` under way, if there is one.
pub(crate) async fn find_move(
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
    storage: SqlIdentifier,
) -> Result<Option<Move>, PlaceError> {
    let row: Option<MoveRow> = diesel::sql_query(
        "SELECT from_server, to_server, step, started_at::text AS started \
         FROM tenancy.tenant_moves WHERE tenant_id = $1",
    )
    .bind::<SqlUuid, _>(tenant.id)
    .get_result(conn)
    .await
    .optional()?;
    let Some(row) = row else { return Ok(None) };
    let server = |s: Option<String>| s.as_deref().map(ServerAddress::parse).transpose();
    Ok(Some(Move {
        from: server(row.from_server).map_err(PlaceError::Invalid)?,
        to: server(row.to_server).map_err(PlaceError::Invalid)?,
        switched: row.step == "switched",
        started: row.started,
        storage,
    }))
}

/// A move of `tenant` under way to `to` is refused unless it is the one asked for (then
/// it is resumed).
pub(crate) fn resumed(
    under_way: Move,
    tenant: &Tenant,
    to: Option<&ServerAddress>,
) -> Result<Move, PlaceError> {
    if under_way.to.as_ref() == to {
        return Ok(under_way);
    }
    Err(PlaceError::Conflict(format!(
        "a move of tenant '{}' to {} is under way: resume it with `tenant move {} --to {}`",
        tenant.identifier,
        server_name(under_way.to.as_ref()),
        tenant.identifier,
        under_way
            .to
            .as_ref()
            .map_or("default", ServerAddress::as_str),
    )))
}

/// Refuses to move `tenant` to `to`, the server it is on.
pub(crate) fn check_elsewhere(
    tenant: &Tenant,
    from: Option<&ServerAddress>,
    to: Option<&ServerAddress>,
) -> Result<(), PlaceError> {
    if from == to {
        return Err(PlaceError::Conflict(format!(
            "tenant '{}' is on {} already",
            tenant.identifier,
            server_name(to)
        )));
    }
    Ok(())
}

{%- if isolation == "schema" or isolation == "rls" %}

/// Where the registry places `tenant` now (`tenant` may be a cache's older copy); a move to
/// that very server is refused.
pub(crate) async fn current_server(
    control: &mut AsyncPgConnection,
    tenant: &Tenant,
    to: Option<&ServerAddress>,
) -> Result<Option<ServerAddress>, PlaceError> {
    let now = crate::tenancy::registry::find_by_identifier(control, &tenant.identifier).await?;
    let now = now
        .filter(|now| now.id == tenant.id)
        .ok_or_else(|| PlaceError::Conflict(format!("tenant '{}' is gone", tenant.identifier)))?;
    check_elsewhere(tenant, now.server.as_ref(), to)?;
    Ok(now.server)
}

/// The owner's bare connection to `server` (default: the default server), in the database
/// the tenants' schemas or shared tables are in there.
pub(crate) async fn owner_client(
    ctx: &Context,
    servers: &super::Servers,
    server: Option<&ServerAddress>,
) -> Result<tokio_postgres::Client, PlaceError> {
    let config = (servers.owner_config(ctx, server)).map_err(PlaceError::Invalid)?;
    crate::db::connect::bare(config, &ctx.runtime)
        .await
        .map_err(|e| PlaceError::Copy(format!("{}: {e}", server_name(server))))
}
{%- endif %}

/// Records the move of `tenant`'s `storage` from `from` to `to`, and reads it back.
pub(crate) async fn record_move(
    control: &mut AsyncPgConnection,
    tenant: &Tenant,
    storage: SqlIdentifier,
    from: Option<&ServerAddress>,
    to: Option<&ServerAddress>,
) -> Result<Move, PlaceError> {
    diesel::sql_query(
        "INSERT INTO tenancy.tenant_moves (tenant_id, from_server, to_server) \
         VALUES ($1, $2, $3)",
    )
    .bind::<SqlUuid, _>(tenant.id)
    .bind::<Nullable<Text>, _>(from.map(ServerAddress::as_str))
    .bind::<Nullable<Text>, _>(to.map(ServerAddress::as_str))
    .execute(control)
    .await?;
    find_move(control, tenant, storage)
        .await?
        .ok_or(PlaceError::Database(diesel::result::Error::NotFound))
}

/// Points the registry at the move's target with `update` (SQL: `$1` the tenant's id, `$2`
/// the server) and records that the move switched, in one transaction.
pub(crate) async fn switch(
    ctx: &Context,
    tenant: &Tenant,
    moving: &Move,
    update: &'static str,
) -> Result<(), PlaceError> {
    let mut control = control(ctx).await?;
    let to = moving.to.as_ref().map(ServerAddress::as_str);
    control
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            diesel::sql_query(update)
                .bind::<SqlUuid, _>(tenant.id)
                .bind::<Nullable<Text>, _>(to)
                .execute(conn)
                .await?;
            diesel::sql_query(
                "UPDATE tenancy.tenant_moves SET step = 'switched' WHERE tenant_id = $1",
            )
            .bind::<SqlUuid, _>(tenant.id)
            .execute(conn)
            .await
            .map(drop)
        })
        .await?;
    Ok(())
}

/// Whether a switch may be undone: the move is recorded, and did not switch (a switch
/// whose commit went unanswered may have happened: never undo that).
pub(crate) async fn check_not_switched(
    ctx: &Context,
    tenant: &Tenant,
    moving: &Move,
) -> Result<(), PlaceError> {
    let mut control = control(ctx).await?;
    if find_move(&mut control, tenant, moving.storage.clone())
        .await?
        .is_none_or(|m| m.switched)
    {
        return Err(PlaceError::Conflict(format!(
            "the move of tenant '{}' switched or ended meanwhile: nothing to give up",
            tenant.identifier
        )));
    }
    Ok(())
}

/// Drops the record of `tenant`'s move.
pub(crate) async fn forget_move(ctx: &Context, tenant: &Tenant) -> Result<(), PlaceError> {
    let mut control = control(ctx).await?;
    diesel::sql_query("DELETE FROM tenancy.tenant_moves WHERE tenant_id = $1")
        .bind::<SqlUuid, _>(tenant.id)
        .execute(&mut control)
        .await?;
    Ok(())
}

/// The owner's connection to the control database.
pub(crate) async fn control(ctx: &Context) -> Result<PgConn, PlaceError> {
    Ok(ctx
        .connect(ctx.owner.clone())
        .await
        .map_err(MigrateError::from)?)
}

/// Opens a transaction on `source` that locks every table of `schema` against writes;
/// reads go on. Waits `lock_within` at most for the writes under way.
pub(crate) async fn lock_against_writes(
    source: &tokio_postgres::Client,
    schema: &str,
    lock_within: Duration,
) -> Result<(), PlaceError> {
    let tables: Vec<String> = source
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            &[&schema],
        )
        .await
        .map_err(copy_failed)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    begin_locked(source, &tables, "EXCLUSIVE", lock_within).await
}

pub(crate) fn copy_failed(error: tokio_postgres::Error) -> PlaceError {
    PlaceError::Copy(error.to_string())
}

{%- if isolation != "rls" %}

/// `value` as an SQL string literal (for what takes no bind parameter: `COMMENT`).
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
{%- endif %}
