//! The isolation strategy this service was generated with, behind one trait.
//!
//! A strategy says where a tenant's connections go and what scopes them ([`Strategy::route`]),
//! how to open one ([`Strategy::connect_config`]), and how to provision, migrate and destroy
//! a tenant's storage. It sees only a [`Context`]: the two roles' connection settings and
//! the runtime that opens connections. A new strategy is one file
//! implementing [`Strategy`], selected below.

use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::runtime::Handle;

use crate::db::connect::{ConnectError, PgConn, connect};
use crate::db::migrate::MigrateError;
use crate::db::pool::{Home, PoolError, SessionScope, TENANT_SETTING};
use crate::db::settings::DatabaseSettings;
use crate::db::tls::PgConfig;
use crate::domain::{Isolation, SqlIdentifier, Tenant};
use crate::settings::{ConfigError, Key, Source};

/// What a strategy may use.
pub struct Context {
    /// The application role, unscoped (tenant connections start from it).
    pub app: PgConfig,
    /// The role that owns the tables: migrations, provisioning, destroy.
    pub owner: PgConfig,
    /// The application role, when it differs from the owner: it is granted data access to
    /// what the owner creates.
    pub app_role: Option<SqlIdentifier>,
    /// The runtime every connection is opened on.
    pub runtime: Handle,
    /// The control plane's pool (the tenant registry).
    pub control: crate::db::ControlPool,
    /// Whether the owner's URL was given (`TENANCY_MIGRATION_DATABASE_URL`); without it,
    /// `owner` is the application role, which cannot create schemas or databases on other
    /// servers.
    pub has_owner: bool,
}

impl Context {
    /// A connection outside every pool (migrations, provisioning, destroy).
    pub async fn connect(&self, config: PgConfig) -> Result<PgConn, ConnectError> {
        connect(config, &self.runtime, None, None).await
    }
}

/// The migrations one tenant lacks (empty: up to date), or why they could not be read
/// (its server did not answer).
pub type Pending = Result<Vec<String>, String>;

/// Where a tenant's connections go, and what makes a shared connection serve it.
#[derive(Debug, Clone)]
pub struct Route {
    pub home: Home,
    /// `None`: a connection of `home` serves this tenant only (its own database).
    pub scope: Option<SessionScope>,
}

/// An isolation strategy.
pub trait Strategy: Sized + Send + Sync + 'static {
    /// What the strategy reads from the configuration (`()`: nothing of its own).
    type Settings: std::fmt::Debug + Clone + Send + Sync + 'static;

    /// The `TENANCY_*` keys of [`Strategy::Settings`], in groups.
    const KEYS: &'static [&'static [Key]] = &[];

    /// Reads and checks [`Strategy::Settings`].
    fn read_settings(src: &Source) -> Result<Self::Settings, ConfigError>;

    /// Built once at start-up.
    fn new(settings: &Self::Settings, database: &DatabaseSettings) -> Self;

    /// Where `tenant`'s connections go; an error for a tenant this strategy must not serve.
    fn route(&self, tenant: &Tenant) -> Result<Route, String>;

    /// The settings of a new connection for `tenant` (called only when one is opened).
    fn connect_config(
        &self,
        ctx: &Context,
        tenant: &Tenant,
    ) -> impl Future<Output = Result<PgConfig, PoolError>>;

    /// What all tenants share (tables, records), as the owner.
    fn migrate_shared(
        &self,
        ctx: &Context,
    ) -> impl Future<Output = Result<Vec<String>, MigrateError>>;

    /// What `migrate_shared` would apply, changing nothing.
    fn pending_shared(
        &self,
        ctx: &Context,
    ) -> impl Future<Output = Result<Vec<String>, MigrateError>>;

    /// What each of `tenants` lacks (one per tenant, in order), changing nothing: a
    /// tenant on a server that does not answer is one the others go on without.
    /// Fleet-sized: a few statements, not a connection per tenant, wherever the strategy
    /// allows.
    fn pending(
        &self,
        ctx: &Context,
        tenants: &[Tenant],
    ) -> impl Future<Output = Result<Vec<Pending>, MigrateError>>;

    /// Creates a new tenant's storage through `conn`, a connection of the application role
    /// to the control database, so that a process holding no owner's password (`serve`)
    /// creates tenants wherever the strategy allows it. `Ok(false)`: left for what holds
    /// the owner's rights (`migrate`, `tenant create`), which completes it. Safe to repeat.
    fn provision(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> impl Future<Output = Result<bool, MigrateError>>;

    /// Creates or updates `tenant`'s storage, as the owner. Safe to repeat: this is how an
    /// interrupted provisioning completes.
    fn migrate(
        &self,
        ctx: &Context,
        tenant: &Tenant,
    ) -> impl Future<Output = Result<Vec<String>, MigrateError>>;

    /// Removes `tenant`'s storage; `conn` is the application role's connection to the
    /// control database, in the transaction that then removes the registry row.
    fn destroy(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> impl Future<Output = QueryResult<()>>;

    /// What `destroy` would drop, changing nothing (`tenant destroy --dry-run`); `conn` is
    /// the owner's connection to the control database (row counts read every table).
    fn destroy_plan(
        &self,
        ctx: &Context,
        conn: &mut AsyncPgConnection,
        tenant: &Tenant,
    ) -> impl Future<Output = QueryResult<DestroyPlan>>;

    /// Refuses an application role that would defeat the strategy.
    fn check_app_role(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> impl Future<Output = Result<(), String>>;
}

/// What destroying a tenant drops, found without dropping it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DestroyPlan {
    /// What goes, in words: `schema "tenant_acme" and everything in it`, say.
    pub storage: String,
    /// Whether that storage exists now (a tenant whose provisioning never ran has none).
    pub exists: bool,
    /// Each table concerned, with the rows that go.
    pub tables: Vec<TableRows>,
}

{%- unless isolation == "rls" %}

/// Whether something exists (a catalog look-up).
#[derive(diesel::QueryableByName)]
pub(crate) struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub exists: bool,
}
{%- endunless %}

/// A table and how many of its rows a destroy removes.
#[derive(Debug, Clone, serde::Serialize, diesel::QueryableByName)]
pub struct TableRows {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub table: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub rows: i64,
}

/// Every table of `schema` with its row count (exact: `count(*)`, run server-side per
/// table); with `tenant_rows`, only tables with a `tenant_id` column, counting the rows of
/// the tenant whose id the connection's `app.tenant_id` holds.
pub(crate) async fn tables_with_rows(
    conn: &mut AsyncPgConnection,
    schema: &str,
    tenant_rows: bool,
) -> QueryResult<Vec<TableRows>> {
    let filter = if tenant_rows {
        format!(" WHERE tenant_id = current_setting(''{TENANT_SETTING}'')::uuid")
    } else {
        String::new()
    };
    diesel::sql_query(format!(
        "SELECT c.relname::text AS \"table\", \
           (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I{filter}', \
             n.nspname, c.relname), false, true, '')))[1]::text::bigint AS rows \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND ($2 = false OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
                AND a.attname = 'tenant_id' AND NOT a.attisdropped)) \
         ORDER BY c.relname"
    ))
    .bind::<diesel::sql_types::Text, _>(schema)
    .bind::<diesel::sql_types::Bool, _>(tenant_rows)
    .load(conn)
    .await
}

/// What `check_app_role` learns of the application role (`current_user`).
#[derive(diesel::QueryableByName)]
pub(crate) struct RoleCheck {
    #[diesel(sql_type = diesel::sql_types::Text)]
    role: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    privileged: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    owned: i64,
}

impl RoleCheck {
    /// Asks PostgreSQL about the application role: `privileged` is an SQL condition on
    /// `pg_roles r` (e.g. `r.rolsuper`), `owned` an SQL count of what `r` owns among the
    /// tenants' storage, `$1` standing for `name` (a schema or prefix).
    pub(crate) async fn of(
        conn: &mut AsyncPgConnection,
        privileged: &str,
        owned: &str,
        name: &str,
    ) -> Result<Self, String> {
        diesel::sql_query(format!(
            "SELECT r.rolname::text AS role, ({privileged}) AS privileged, ({owned}) AS owned \
             FROM pg_roles r WHERE r.rolname = current_user"
        ))
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result(conn)
        .await
        .map_err(|e| format!("could not check the application role: {e}"))
    }

    /// Refuses a privileged role (`privileged_means`: why that defeats the strategy) or
    /// one that owns tenant storage (`owned_means`: what it owns, and what it could do).
    pub(crate) fn refuse(self, privileged_means: &str, owned_means: &str) -> Result<(), String> {
        if self.privileged {
            return Err(format!(
                "role '{}' {privileged_means}: connect as a role without that and run \
                 migrations as the owner (TENANCY_MIGRATION_DATABASE_URL; \
                 `migrate --create-app-role` creates such a role)",
                self.role
            ));
        }
        if self.owned > 0 {
            return Err(format!(
                "role '{}' owns {} {owned_means}: run migrations as another role \
                 (TENANCY_MIGRATION_DATABASE_URL)",
                self.role, self.owned
            ));
        }
        Ok(())
    }
}

/// Refuses a tenant whose registry row says it is stored another way than `expected`
/// (a registry shared with a service generated for another strategy).
pub(crate) fn ensure(tenant: &Tenant, expected: Isolation) -> Result<(), String> {
    if tenant.isolation == expected {
        Ok(())
    } else {
        Err(format!(
            "tenant '{}' is stored with {} isolation; this code serves {}",
            tenant.identifier, tenant.isolation, expected
        ))
    }
}

/// A query error carrying `why` (for `destroy`).
pub(crate) fn query_error(why: String) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(why.into())
}
{%- if isolation == "schema" %}

mod schema;
pub use schema::SchemaStrategy as Selected;
/// How every tenant of this service is isolated.
pub const ISOLATION: Isolation = Isolation::Schema;
{%- endif %}
{%- if isolation == "rls" %}

mod rls;
pub use rls::RlsStrategy as Selected;
/// How every tenant of this service is isolated.
pub const ISOLATION: Isolation = Isolation::Rls;
{%- endif %}

pub use crate::domain::ServerAddress;
pub(crate) mod copy;
pub mod moving;
mod servers;
pub use copy::TableCopy;
pub use moving::{Move, PlaceError, Relocate};
pub use servers::{ServerCheck, Servers, server_name};
{%- if tenant_databases %}

mod database;
{%- endif %}
{%- if isolation == "database" %}
pub use database::DatabaseStrategy as Selected;
/// How every tenant of this service is isolated.
pub const ISOLATION: Isolation = Isolation::Database;
{%- endif %}
{%- if isolation == "hybrid" %}
pub use database::DatabaseStrategy;
{%- endif %}
{%- if isolation == "hybrid" %}

mod hybrid;
pub mod rls;
pub mod schema;
pub use hybrid::HybridStrategy as Selected;
pub use hybrid::{in_tier, tier_schema};
{%- endif %}
