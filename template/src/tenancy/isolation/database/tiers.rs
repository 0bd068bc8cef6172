//! A tenant that comes to the `database` tier from another (hybrid's `tenant move
//! --isolation database`): its database, made before its data is copied in, or given up.

use diesel::OptionalExtension;
use diesel::sql_types::Uuid as SqlUuid;
use diesel_async::RunQueryDsl;

use super::moving::control;
use super::{DatabaseStrategy, PlaceError, ServerAddress, placement};
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::tenancy::isolation::{Context, Exists};

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
            self.check_server(server)?;
        }
        self.place(ctx, tenant, server).await?;
        let mut control = control(ctx).await?;
        let placed = placement(&mut control, tenant)
            .await?
            .ok_or(PlaceError::Database(diesel::result::Error::NotFound))?;
        let (name, server) = (
            placed.database().map_err(PlaceError::Invalid)?,
            placed.server().map_err(PlaceError::Invalid)?,
        );
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
    /// placement, unless `tenant` is in tier `database` after all (a switch whose commit
    /// went unanswered).
    pub(crate) async fn abandon_database_of(
        &self,
        ctx: &Context,
        tenant: &Tenant,
        marker: &str,
    ) -> Result<(), PlaceError> {
        let mut control = control(ctx).await?;
        let switched: Option<Exists> = diesel::sql_query(
            "SELECT isolation = 'database' AS exists FROM tenancy.tenants WHERE id = $1",
        )
        .bind::<SqlUuid, _>(tenant.id)
        .get_result(&mut control)
        .await
        .optional()?;
        if switched.is_none_or(|s| s.exists) {
            return Err(PlaceError::Conflict(format!(
                "tenant '{}' is in tier database already, or gone: nothing to give up",
                tenant.identifier
            )));
        }
        let Some(placed) = placement(&mut control, tenant).await? else {
            return Ok(());
        };
        let (name, server) = (
            placed.database().map_err(PlaceError::Invalid)?,
            placed.server().map_err(PlaceError::Invalid)?,
        );
        self.drop_marked(ctx, &name, server.as_ref(), marker, false)
            .await?;
        diesel::sql_query("DELETE FROM tenancy.tenant_databases WHERE tenant_id = $1")
            .bind::<SqlUuid, _>(tenant.id)
            .execute(&mut control)
            .await?;
        Ok(())
    }
}
