//! Moving a tenant's database to another server (`tenant move`), step by step; each step
//! is safe to repeat, and `tenancy.tenant_moves` records how far a move got.

use diesel::OptionalExtension;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{DatabaseStrategy, ServerAddress, placement, server_name};
use crate::db::connect::{PgConn, with_session_option};
use crate::db::migrate::grants_on_schema;
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::isolation::copy::{self, TableCopy};
use crate::tenancy::isolation::moving::{
    self, Move, Relocate, check_elsewhere, check_not_switched, control, copy_failed, forget_move,
    lock_against_writes, record_move, resumed, switch,
};
use crate::tenancy::isolation::{Context, Exists, PlaceError};

/// The move of `tenant`'s database under way, if there is one.
pub(super) async fn find_move(
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
) -> Result<Option<Move>, PlaceError> {
    let Some(placed) = placement(conn, tenant).await? else {
        return Ok(None);
    };
    let name = placed.database().map_err(PlaceError::Invalid)?;
    moving::find_move(conn, tenant, name).await
}

impl DatabaseStrategy {
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

    /// Drops the move's copy on its target if there is one: only a database marked with
    /// this move's marker, never one that was there before.
    async fn drop_copy(&self, ctx: &Context, moving: &Move) -> Result<(), PlaceError> {
        let (name, to) = (&moving.storage, moving.to.as_ref());
        self.drop_marked(ctx, name, to, &moving.marker(), false)
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
}

impl Relocate for DatabaseStrategy {
    fn storage(&self) -> &'static str {
        "database"
    }

    async fn unfinished_move(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<Option<String>, PlaceError> {
        Ok(find_move(conn, tenant)
            .await?
            .as_ref()
            .map(Move::unfinished))
    }

    /// Only a tenant with a database of its own moves; a database of that name already
    /// on `to` is refused.
    async fn start_move(
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
            return resumed(under_way, tenant, to);
        }
        let Some(placed) = placement(&mut control, tenant).await? else {
            return Err(PlaceError::Invalid(format!(
                "tenant '{}' has no database yet: `migrate` creates it",
                tenant.identifier
            )));
        };
        let from = placed.server().map_err(PlaceError::Invalid)?;
        check_elsewhere(tenant, from.as_ref(), to)?;
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
        record_move(&mut control, tenant, name, from.as_ref(), to).await
    }

    async fn prepare_copy(
        &self,
        ctx: &Context,
        _tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        self.drop_copy(ctx, moving).await?;
        let (name, to) = (&moving.storage, moving.to.as_ref());
        self.create_database(ctx, name, to, Some(&moving.marker()))
            .await?;
        Ok(())
    }

    /// The source's tables are locked against writes (`EXCLUSIVE`: reads go on) for the
    /// whole copy; before they are let go, the application role loses its right to write
    /// them and its sessions there are ended.
    async fn copy_and_switch(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
        lock_within: std::time::Duration,
    ) -> Result<Vec<TableCopy>, PlaceError> {
        let name = &moving.storage;
        let source = self.owner_inside(ctx, name, moving.from.as_ref()).await?;
        let target = self.owner_inside(ctx, name, moving.to.as_ref()).await?;
        lock_against_writes(&source, "public", lock_within).await?;
        target.batch_execute("BEGIN").await.map_err(copy_failed)?;
        let copied = copy::copy_tables(&source, "public", &target, "public")
            .await
            .map_err(PlaceError::Copy)?;
        target.batch_execute("COMMIT").await.map_err(copy_failed)?;
        seal(&source, ctx).await?;
        drop(source);
        let update = "UPDATE tenancy.tenant_databases SET server = $2 WHERE tenant_id = $1";
        switch(ctx, tenant, moving, update).await?;
        Ok(copied)
    }

    /// The application role may no longer connect to the old copy, and its sessions there
    /// (opened before the switch) end.
    async fn close_old(
        &self,
        ctx: &Context,
        _tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let name = &moving.storage;
        let old = self
            .servers
            .owner_config(ctx, moving.from.as_ref())
            .map_err(PlaceError::Invalid)?;
        let there = crate::db::connect::bare(old, &ctx.runtime)
            .await
            .map_err(|e| PlaceError::Copy(format!("{}: {e}", server_name(moving.from.as_ref()))))?;
        let gone = tokio_postgres::Client::query(
            &there,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&name.as_str()],
        )
        .await
        .map_err(copy_failed)?
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
                .map_err(copy_failed)?;
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
        .map_err(copy_failed)?;
        Ok(())
    }

    async fn finish_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        let mut there = self.owner_on(ctx, moving.from.as_ref()).await?;
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            moving.storage.quoted()
        ))
        .execute(&mut there)
        .await?;
        forget_move(ctx, tenant).await
    }

    async fn abandon_move(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        moving: &Move,
    ) -> Result<(), PlaceError> {
        check_not_switched(ctx, tenant, moving).await?;
        if let Some(role) = &ctx.app_role {
            let source = (self.owner_inside(ctx, &moving.storage, moving.from.as_ref())).await?;
            source
                .batch_execute(&grants_on_schema("public", role).join("; "))
                .await
                .map_err(copy_failed)?;
        }
        self.drop_copy(ctx, moving).await?;
        forget_move(ctx, tenant).await
    }
}

/// Ends the transaction of [`lock_against_writes`] so that nothing of the application
/// role's writes the old copy any more: its right to write is revoked, and its sessions
/// there end (one waiting on the lock gets an error, never a success), before the lock
/// is let go. Replicas open their next connection where the registry says.
async fn seal(source: &tokio_postgres::Client, ctx: &Context) -> Result<(), PlaceError> {
    if let Some(role) = &ctx.app_role {
        source
            .batch_execute(&format!(
                "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM {}",
                role.quoted()
            ))
            .await
            .map_err(copy_failed)?;
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
    .map_err(copy_failed)?;
    source.batch_execute("COMMIT").await.map_err(copy_failed)
}
