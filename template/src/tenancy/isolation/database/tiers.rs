//! A tenant that comes to the `database` tier from another (hybrid's `tenant move
//! --isolation database`): its database, made before its data is copied in, or given up;
//! and one that leaves it (`--isolation schema`): its database, closed to every session
//! once the tenant is served from elsewhere, then dropped.

use diesel::OptionalExtension;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::moving::find_move;
use super::{DatabaseStrategy, ServerAddress, placement, server_name};
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::isolation::moving::control;
use crate::tenancy::isolation::{Context, Exists, PlaceError};

impl DatabaseStrategy {
    /// Places `tenant` (given as it will be, in tier `database`) on `server` (else where
    /// the placement policy says) and creates its database there with the tenant tables,
    /// empty, marked with `marker`; a database of that name marked so (left by an
    /// interrupted attempt) is made anew, one not marked so is refused. Returns its name
    /// and server.
    pub(crate) async fn prepare_database_of(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        server: Option<&ServerAddress>,
        marker: &str,
    ) -> Result<(SqlIdentifier, Option<ServerAddress>), PlaceError> {
        if let Some(server) = server {
            self.servers.check(server).map_err(PlaceError::Invalid)?;
        }
        let mut control = control(ctx).await?;
        let placed = control
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                // An interrupted attempt's record stands.
                if let Some(placed) = placement(conn, tenant).await? {
                    return Ok(placed);
                }
                let chosen = match server {
                    Some(server) => Some(server.clone()),
                    None => self.servers.choose(conn, Some(tenant.id)).await?,
                };
                self.record(conn, tenant, chosen.as_ref()).await
            })
            .await?;
        let (name, placed_on) = placed.location()?;
        if let Some(wanted) = server
            && placed_on.as_ref() != Some(wanted)
        {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is already placed on {}, not {}",
                tenant.identifier,
                server_name(placed_on.as_ref()),
                wanted.as_str()
            )));
        }
        let server = placed_on;
        self.drop_marked(ctx, &name, server.as_ref(), marker, true)
            .await?;
        self.create_database(ctx, &name, server.as_ref(), Some(marker))
            .await?;
        Ok((name, server))
    }

    /// The server of `tenant`'s database, for a tenant in tier `database` (`None`: the
    /// default server, or another tier).
    pub(crate) async fn placement_of(
        &self,
        ctx: &Context,
        tenant: &Tenant,
    ) -> Result<Option<ServerAddress>, PlaceError> {
        if tenant.isolation != Isolation::Database {
            return Ok(None);
        }
        let mut control = control(ctx).await?;
        match placement(&mut control, tenant).await? {
            Some(placed) => placed.server().map_err(PlaceError::Invalid),
            None => Ok(None),
        }
    }

    /// Gives up [`Self::prepare_database_of`]: drops the database it made and forgets the
    /// placement; refused if `tenant` is in tier `database` after all (a switch whose
    /// commit went unanswered).
    pub(crate) async fn abandon_database_of(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        marker: &str,
    ) -> Result<(), PlaceError> {
        let Some((name, server)) = self.left(ctx, tenant).await? else {
            return Ok(());
        };
        self.drop_marked(ctx, &name, server.as_ref(), marker, false)
            .await?;
        self.forget_placement(ctx, tenant).await
    }

    /// The name and server of `tenant`'s database (its tier `database`); refused while a
    /// move of it between servers is unfinished.
    pub(crate) async fn database_of(
        &self,
        ctx: &Context,
        tenant: &Tenant,
    ) -> Result<(SqlIdentifier, Option<ServerAddress>), PlaceError> {
        let mut control = control(ctx).await?;
        if find_move(&mut control, tenant).await?.is_some() {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is moving between servers: finish that move first (`tenant move \
                 {}` to where it was going)",
                tenant.identifier, tenant.identifier
            )));
        }
        placement(&mut control, tenant)
            .await?
            .ok_or(PlaceError::Database(diesel::result::Error::NotFound))?
            .location()
    }

    /// Where the database `tenant`, in another tier now, left behind is, if there is one
    /// (its placement is still recorded: it is closed and dropped by
    /// [`Self::drop_database_left`]). `conn`: any connection to the control database.
    pub(crate) async fn database_left(
        &self,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> Result<Option<String>, PlaceError> {
        if tenant.isolation == Isolation::Database {
            return Ok(None);
        }
        let Some(placed) = placement(conn, tenant).await? else {
            return Ok(None);
        };
        let server = placed.server().map_err(PlaceError::Invalid)?;
        Ok(Some(server_name(server.as_ref()).to_owned()))
    }

    /// Closes the database `tenant` left (see [`Self::database_left`]) to every
    /// session: no one may connect any more, the sessions there end. A replica that has
    /// not heard of the change gets an outage to retry, never an answer from there. Safe
    /// to repeat; refused while the registry names tier `database`.
    pub(crate) async fn close_database_left(
        &self,
        ctx: &Context,
        tenant: &Tenant,
    ) -> Result<(), PlaceError> {
        let Some((name, server)) = self.left(ctx, tenant).await? else {
            return Ok(());
        };
        let mut there = self.owner_on(ctx, server.as_ref()).await?;
        let exists: Option<Exists> =
            diesel::sql_query("SELECT true AS exists FROM pg_database WHERE datname = $1")
                .bind::<Text, _>(name.as_str())
                .get_result(&mut there)
                .await
                .optional()?;
        if exists.is_none() {
            return Ok(());
        }
        diesel::sql_query(format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            name.quoted()
        ))
        .execute(&mut there)
        .await?;
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend'",
        )
        .bind::<Text, _>(name.as_str())
        .execute(&mut there)
        .await?;
        Ok(())
    }

    /// Drops the database `tenant` left and forgets where it was (safe to repeat);
    /// returns where it was, if it was still there. Refused while the registry names
    /// tier `database`.
    pub(crate) async fn drop_database_left(
        &self,
        ctx: &Context,
        tenant: &Tenant,
    ) -> Result<Option<String>, PlaceError> {
        let Some((name, server)) = self.left(ctx, tenant).await? else {
            return Ok(None);
        };
        let mut there = self.owner_on(ctx, server.as_ref()).await?;
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            name.quoted()
        ))
        .execute(&mut there)
        .await?;
        self.forget_placement(ctx, tenant).await?;
        Ok(Some(format!(
            "{} on {}",
            name.as_str(),
            server_name(server.as_ref())
        )))
    }

    /// `tenant`'s database while it is in another tier (one it left, or one made for a
    /// move there that did not switch): none if there is no placement; refused if the
    /// registry names tier `database`.
    async fn left(
        &self,
        ctx: &Context,
        tenant: &Tenant,
    ) -> Result<Option<(SqlIdentifier, Option<ServerAddress>)>, PlaceError> {
        let mut control = control(ctx).await?;
        let in_database: Option<Exists> = diesel::sql_query(
            "SELECT isolation = 'database' AS exists FROM tenancy.tenants WHERE id = $1",
        )
        .bind::<SqlUuid, _>(tenant.id)
        .get_result(&mut control)
        .await
        .optional()?;
        if in_database.is_none_or(|d| d.exists) {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is in tier database, or gone: its database stays",
                tenant.identifier
            )));
        }
        placement(&mut control, tenant)
            .await?
            .map(|placed| placed.location())
            .transpose()
    }

    async fn forget_placement(&self, ctx: &Context, tenant: &Tenant) -> Result<(), PlaceError> {
        let mut control = control(ctx).await?;
        diesel::sql_query("DELETE FROM tenancy.tenant_databases WHERE tenant_id = $1")
            .bind::<SqlUuid, _>(tenant.id)
            .execute(&mut control)
            .await?;
        Ok(())
    }
}
