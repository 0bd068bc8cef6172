//! Moving a tenant's database to another server (`tenant move`), step by step; each step
//! is safe to repeat, and `tenancy.tenant_moves` records how far a move got.

use diesel::OptionalExtension;
use diesel::sql_types::{Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::copy::{self, TableCopy};
use super::{DatabaseStrategy, PlaceError, ServerAddress, placement, server_name};
use crate::db::connect::{PgConn, with_session_option};
use crate::db::migrate::{MigrateError, grants_on_schema};
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::isolation::{Context, Exists};

/// A move of a tenant's database under way (`tenancy.tenant_moves`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Where the tenant's database was when the move started (`None`: the default server).
    pub from: Option<ServerAddress>,
    pub to: Option<ServerAddress>,
    /// Whether the registry names `to` already (what is left: dropping the old copy).
    pub switched: bool,
    /// The tenant's database, on both servers.
    database: SqlIdentifier,
    /// When the move started, as PostgreSQL wrote it (it names the move's copy).
    started: String,
}

impl Move {
    /// The comment on the move's copy: a resumed move drops only a database it made.
    fn marker(&self) -> String {
        format!("tenant move started {}", self.started)
    }
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
    #[diesel(sql_type = Text)]
    database_name: String,
}

pub(super) async fn find_move(
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
) -> Result<Option<Move>, PlaceError> {
    let row: Option<MoveRow> = diesel::sql_query(
        "SELECT m.from_server, m.to_server, m.step, m.started_at::text AS started, \
           d.database_name \
         FROM tenancy.tenant_moves m JOIN tenancy.tenant_databases d USING (tenant_id) \
         WHERE m.tenant_id = $1",
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
        database: SqlIdentifier::parse(&row.database_name).map_err(PlaceError::Invalid)?,
    }))
}

impl DatabaseStrategy {
    /// What a move of `tenant` between servers left unfinished, if one is under way or
    /// stopped partway (running the same `tenant move` again finishes it). `conn`: any
    /// connection to the control database (the application role may read the moves).
    pub async fn unfinished_move(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<Option<String>, PlaceError> {
        Ok(find_move(conn, tenant).await?.map(|moving| {
            format!(
                "its move to {} is not finished",
                server_name(moving.to.as_ref())
            )
        }))
    }

    /// The owner's connection to database `postgres` on `server`.
    pub(super) async fn owner_on(
        &self,
        ctx: &Context,
        server: Option<&ServerAddress>,
    ) -> Result<PgConn, PlaceError> {
        let config = self
            .servers
            .owner_config(ctx, server)
            .map_err(PlaceError::Invalid)?;
        ctx.connect(config)
            .await
            .map_err(|e| PlaceError::Copy(format!("{}: {e}", server_name(server))))
    }

    /// The owner's bare connection to `tenant`'s database on `server` (for `COPY`).
    pub(crate) async fn owner_inside(
        &self,
        ctx: &Context,
        name: &SqlIdentifier,
        server: Option<&ServerAddress>,
    ) -> Result<tokio_postgres::Client, PlaceError> {
        let mut inside = self
            .servers
            .owner_config(ctx, server)
            .map_err(PlaceError::Invalid)?;
        inside.dbname(name.as_str());
        let inside = with_session_option(&inside, "search_path", "public");
        crate::db::connect::bare(inside, &ctx.runtime)
            .await
            .map_err(|e| PlaceError::Copy(format!("{}: {e}", server_name(server))))
    }

    /// Starts moving `tenant`'s database to `to` (`None`: the default server), or finds
    /// the move of it under way to the same place (to resume). Refused: a tenant already
    /// there, a server not listed, a move under way elsewhere, a database of that name
    /// already on `to`.
    pub async fn start_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        to: Option<&ServerAddress>,
    ) -> Result<Move, PlaceError> {
        if tenant.isolation != Isolation::Database {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is isolated with {}: only a tenant with a database of its own \
                 moves between servers",
                tenant.identifier, tenant.isolation
            )));
        }
        if let Some(to) = to {
            self.servers.check(to).map_err(PlaceError::Invalid)?;
        }
        let mut control = control(ctx).await?;
        if let Some(under_way) = find_move(&mut control, tenant).await? {
            if under_way.to.as_ref() != to {
                return Err(PlaceError::Conflict(format!(
                    "a move of tenant '{}' to {} is under way: resume it with \
                     `tenant move {} --to {}`",
                    tenant.identifier,
                    server_name(under_way.to.as_ref()),
                    tenant.identifier,
                    under_way
                        .to
                        .as_ref()
                        .map_or("default", ServerAddress::as_str),
                )));
            }
            return Ok(under_way);
        }
        let Some(placed) = placement(&mut control, tenant).await? else {
            return Err(PlaceError::Invalid(format!(
                "tenant '{}' has no database yet: `migrate` creates it",
                tenant.identifier
            )));
        };
        let from = placed.server().map_err(PlaceError::Invalid)?;
        if from.as_ref() == to {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is on {} already",
                tenant.identifier,
                server_name(to)
            )));
        }
        let name = placed.database().map_err(PlaceError::Invalid)?;
        // A database of that name there may be this very one under another address, or
        // someone else's: never written into, never dropped.
        let mut there = self.owner_on(ctx, to).await?;
        let found: Exists = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists",
        )
        .bind::<Text, _>(name.as_str())
        .get_result(&mut there)
        .await?;
        if found.exists {
            return Err(PlaceError::Conflict(format!(
                "{} already has a database {}: it may be this tenant's under another \
                 address, or another's; drop it or choose another server",
                server_name(to),
                name.quoted()
            )));
        }
        diesel::sql_query(
            "INSERT INTO tenancy.tenant_moves (tenant_id, from_server, to_server) \
             VALUES ($1, $2, $3)",
        )
        .bind::<SqlUuid, _>(tenant.id)
        .bind::<Nullable<Text>, _>(from.as_ref().map(ServerAddress::as_str))
        .bind::<Nullable<Text>, _>(to.map(ServerAddress::as_str))
        .execute(&mut control)
        .await?;
        find_move(&mut control, tenant)
            .await?
            .ok_or(PlaceError::Database(diesel::result::Error::NotFound))
    }

    /// Creates the move's copy on its target, with the tenant tables and nothing in them
    /// (before the tenant is read-only: this takes a while); a copy left by an
    /// interrupted attempt is dropped first.
    pub async fn prepare_copy(&self, ctx: &Context, moving: &Move) -> Result<(), PlaceError> {
        let name = &moving.database;
        self.drop_copy(ctx, name, moving).await?;
        self.create_database(ctx, name, moving.to.as_ref(), Some(&moving.marker()))
            .await?;
        Ok(())
    }

    /// Copies `tenant`'s database into the copy [`Self::prepare_copy`] made, then points
    /// the registry there. The source's tables are locked against writes (`EXCLUSIVE`:
    /// reads go on) for the whole copy; before they are let go, the application role
    /// loses its right to write them and its sessions there are ended, so no write lands
    /// in the old copy, whichever replica sends it. `lock_within`: how long to wait for
    /// writes under way to finish.
    pub async fn copy_and_switch(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
        lock_within: std::time::Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        let name = &moving.database;
        let source = self.owner_inside(ctx, name, moving.from.as_ref()).await?;
        let target = self.owner_inside(ctx, name, moving.to.as_ref()).await?;
        let copy_failed = |e: tokio_postgres::Error| PlaceError::Copy(e.to_string());
        lock_against_writes(&source, lock_within).await?;
        target.batch_execute("BEGIN").await.map_err(copy_failed)?;
        let copied = copy::copy_tables(&source, "public", &target, "public")
            .await
            .map_err(PlaceError::Copy)?;
        target.batch_execute("COMMIT").await.map_err(copy_failed)?;
        seal(&source, ctx).await?;
        drop(source);
        self.switch(ctx, tenant, moving).await?;
        Ok(copied)
    }

    /// Points the registry at the move's target and records the step, in one transaction.
    async fn switch(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let mut control = control(ctx).await?;
        let to = moving.to.as_ref().map(ServerAddress::as_str);
        control
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                diesel::sql_query(
                    "UPDATE tenancy.tenant_databases SET server = $2 WHERE tenant_id = $1",
                )
                .bind::<SqlUuid, _>(tenant.id)
                .bind::<Nullable<Text>, _>(to)
                .execute(conn)
                .await?;
                diesel::sql_query(
                    "UPDATE tenancy.tenant_moves SET step = 'switched' WHERE tenant_id = $1",
                )
                .bind::<SqlUuid, _>(tenant.id)
                .execute(conn)
                .await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// After the switch: the application role may no longer connect to the old copy, and
    /// its sessions there (opened before the switch) end, so that every replica reads
    /// and writes the new place only. Safe to repeat (a resumed move does it again).
    pub async fn close_old(&self, ctx: &Context, moving: &Move) -> Result<(), PlaceError> {
        let name = &moving.database;
        let old = self
            .servers
            .owner_config(ctx, moving.from.as_ref())
            .map_err(PlaceError::Invalid)?;
        let there = crate::db::connect::bare(old, &ctx.runtime)
            .await
            .map_err(|e| PlaceError::Copy(format!("{}: {e}", server_name(moving.from.as_ref()))))?;
        let failed = |e: tokio_postgres::Error| PlaceError::Copy(e.to_string());
        let gone = tokio_postgres::Client::query(
            &there,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&name.as_str()],
        )
        .await
        .map_err(failed)?
        .is_empty();
        if gone {
            // Dropped already by the attempt this one resumes.
            return Ok(());
        }
        if let Some(role) = &ctx.app_role {
            there
                .batch_execute(&format!(
                    "REVOKE CONNECT ON DATABASE {} FROM {}",
                    name.quoted(),
                    role.quoted()
                ))
                .await
                .map_err(failed)?;
        }
        let app_role = ctx.app_role.as_ref().map(SqlIdentifier::as_str);
        tokio_postgres::Client::execute(
            &there,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend' AND usename = coalesce($2, current_user)",
            &[&name.as_str(), &app_role],
        )
        .await
        .map_err(failed)?;
        Ok(())
    }

    /// Ends a switched move: drops the old copy and the move's record.
    pub async fn finish_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let name = &moving.database;
        let mut there = self.owner_on(ctx, moving.from.as_ref()).await?;
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            name.quoted()
        ))
        .execute(&mut there)
        .await?;
        self.forget_move(ctx, tenant).await
    }

    /// Gives up a move that has not switched: the tenant stays where it is and takes
    /// writes there again; the copy is dropped.
    pub async fn abandon_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let mut control = control(ctx).await?;
        // A switch whose commit went unanswered may have happened: never undo that.
        if find_move(&mut control, tenant)
            .await?
            .is_none_or(|m| m.switched)
        {
            return Err(PlaceError::Conflict(format!(
                "the move of tenant '{}' switched or ended meanwhile: nothing to give up",
                tenant.identifier
            )));
        }
        drop(control);
        let name = &moving.database;
        if let Some(role) = &ctx.app_role {
            let source = self.owner_inside(ctx, name, moving.from.as_ref()).await?;
            source
                .batch_execute(&grants_on_schema("public", role).join("; "))
                .await
                .map_err(|e| PlaceError::Copy(e.to_string()))?;
        }
        self.drop_copy(ctx, name, moving).await?;
        self.forget_move(ctx, tenant).await
    }

    /// Drops the move's copy on its target if there is one: only a database marked with
    /// this move's marker, never one that was there before.
    async fn drop_copy(
        &self,
        ctx: &Context,
        name: &SqlIdentifier,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        self.drop_marked(ctx, name, moving.to.as_ref(), &moving.marker(), false)
            .await
    }

    /// Drops database `name` on `server` if it is marked with `marker`; one not marked so
    /// is left alone, or refused (`refuse_others`).
    pub(super) async fn drop_marked(
        &self,
        ctx: &Context,
        name: &SqlIdentifier,
        server: Option<&ServerAddress>,
        marker: &str,
        refuse_others: bool,
    ) -> Result<(), PlaceError> {
        let mut there = self.owner_on(ctx, server).await?;
        let found: Option<Exists> = diesel::sql_query(
            "SELECT shobj_description(d.oid, 'pg_database') IS NOT DISTINCT FROM $2 AS exists \
             FROM pg_database d WHERE d.datname = $1",
        )
        .bind::<Text, _>(name.as_str())
        .bind::<Text, _>(marker)
        .get_result(&mut there)
        .await
        .optional()?;
        match found {
            Some(Exists { exists: true }) => {
                diesel::sql_query(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    name.quoted()
                ))
                .execute(&mut there)
                .await?;
            }
            Some(Exists { exists: false }) if refuse_others => {
                return Err(PlaceError::Conflict(format!(
                    "{} already has a database {}: it may be another's; drop it or choose \
                     another server",
                    server_name(server),
                    name.quoted()
                )));
            }
            _ => {}
        }
        Ok(())
    }

    async fn forget_move(&self, ctx: &Context, tenant: &Tenant) -> Result<(), PlaceError> {
        let mut control = control(ctx).await?;
        diesel::sql_query("DELETE FROM tenancy.tenant_moves WHERE tenant_id = $1")
            .bind::<SqlUuid, _>(tenant.id)
            .execute(&mut control)
            .await?;
        Ok(())
    }
}

/// Opens a transaction on `source` (the tenant's database) that locks every table of
/// `public` against writes; reads go on. Waits `lock_within` at most for the writes
/// under way.
async fn lock_against_writes(
    source: &tokio_postgres::Client,
    lock_within: std::time::Duration,
) -> Result<(), PlaceError> {
    let tables: Vec<String> = source
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await
        .map_err(|e| PlaceError::Copy(e.to_string()))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    copy::begin_locked(source, &tables, "EXCLUSIVE", lock_within).await
}

/// Ends the transaction of [`lock_against_writes`] so that nothing of the application
/// role's writes the old copy any more: its right to write is revoked, and its sessions
/// there end (one waiting on the lock gets an error, never a success), before the lock
/// is let go. Replicas open their next connection where the registry says.
async fn seal(source: &tokio_postgres::Client, ctx: &Context) -> Result<(), PlaceError> {
    let failed = |e: tokio_postgres::Error| PlaceError::Copy(e.to_string());
    if let Some(role) = &ctx.app_role {
        source
            .batch_execute(&format!(
                "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM {}",
                role.quoted()
            ))
            .await
            .map_err(failed)?;
    }
    let app_role = ctx.app_role.as_ref().map(SqlIdentifier::as_str);
    // (`Client::execute`: diesel's `RunQueryDsl::execute` is in scope too.)
    tokio_postgres::Client::execute(
        source,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend' AND usename = coalesce($1, current_user)",
        &[&app_role],
    )
    .await
    .map_err(failed)?;
    source.batch_execute("COMMIT").await.map_err(failed)
}

/// The owner's connection to the control database.
pub(super) async fn control(ctx: &Context) -> Result<PgConn, PlaceError> {
    Ok(ctx
        .connect(ctx.owner.clone())
        .await
        .map_err(MigrateError::from)?)
}
