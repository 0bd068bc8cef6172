//! A bb8 connection manager that opens `AsyncPgConnection`s with a fixed session
//! configuration (for a tenant: its `search_path`) and, for tenant connections, holds a
//! permit of the process-wide connection cap for as long as the connection is open.

use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("could not connect to PostgreSQL: {0}")]
    Connect(#[from] tokio_postgres::Error),
    #[error("could not set up the connection: {0}")]
    Setup(#[from] diesel::ConnectionError),
    #[error("could not set the connection's session variable: {0}")]
    Session(diesel::result::Error),
    #[error("all {0} tenant connections of this process are in use")]
    AtCapacity(u32),
    #[error("the database runtime stopped")]
    RuntimeGone,
    #[error("the tenant's pool was closed")]
    PoolClosed,
    #[error("{0}")]
    Isolation(String),
}

/// Asks for a permit to open one more tenant connection; implemented by the pool registry,
/// which may close idle pools of other tenants to make room.
pub trait ConnectionBudget: Send + Sync + 'static {
    fn acquire(
        &self,
        wait: Duration,
    ) -> impl Future<Output = Result<OwnedSemaphorePermit, PoolError>> + Send;
}

/// A pooled PostgreSQL connection, plus the cap permit it holds (tenant connections only).
pub struct PgConn {
    conn: AsyncPgConnection,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for PgConn {
    type Target = AsyncPgConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// A session variable set once on every new connection of a pool, with
/// `set_config(name, value, false)` (values go in bind parameters; `SET` takes none).
#[derive(Clone, Debug)]
pub struct SessionVariable {
    pub name: &'static str,
    pub value: String,
}

/// How to open the connections of one pool.
#[derive(Clone, Debug)]
pub struct ConnectTarget {
    /// Server, credentials and start-up options (e.g. `-c search_path=...`).
    pub config: tokio_postgres::Config,
    pub session: Option<SessionVariable>,
}

impl From<tokio_postgres::Config> for ConnectTarget {
    fn from(config: tokio_postgres::Config) -> Self {
        Self {
            config,
            session: None,
        }
    }
}

pub struct PgManager<B> {
    target: ConnectTarget,
    budget: Option<Arc<B>>,
    wait: Duration,
    runtime: Handle,
}

impl<B: ConnectionBudget> PgManager<B> {
    pub fn new(
        target: ConnectTarget,
        budget: Option<Arc<B>>,
        wait: Duration,
        runtime: Handle,
    ) -> Self {
        Self {
            target,
            budget,
            wait,
            runtime,
        }
    }
}

/// Opens one connection on the database runtime and sets its session variable.
pub async fn connect(
    target: impl Into<ConnectTarget>,
    runtime: &Handle,
) -> Result<AsyncPgConnection, PoolError> {
    let ConnectTarget { config, session } = target.into();
    runtime
        .spawn(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            let mut conn =
                AsyncPgConnection::try_from_client_and_connection(client, connection).await?;
            if let Some(SessionVariable { name, value }) = session {
                diesel::sql_query("SELECT set_config($1, $2, false)")
                    .bind::<Text, _>(name)
                    .bind::<Text, _>(value)
                    .execute(&mut conn)
                    .await
                    .map_err(PoolError::Session)?;
            }
            Ok(conn)
        })
        .await
        .map_err(|_| PoolError::RuntimeGone)?
}

impl<B: ConnectionBudget> bb8::ManageConnection for PgManager<B> {
    type Connection = PgConn;
    type Error = PoolError;

    async fn connect(&self) -> Result<PgConn, PoolError> {
        let permit = match &self.budget {
            Some(budget) => Some(budget.acquire(self.wait).await?),
            None => None,
        };
        let conn = connect(self.target.clone(), &self.runtime).await?;
        Ok(PgConn {
            conn,
            _permit: permit,
        })
    }

    async fn is_valid(&self, _conn: &mut PgConn) -> Result<(), PoolError> {
        // Pools are built with test_on_check_out(false): a broken connection shows up as a
        // query error, and `has_broken` drops it when it comes back.
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        // A connection returned while a handler panics, or with an open or failed
        // transaction (a cancelled request), is never reused.
        std::thread::panicking() || conn.conn.is_broken()
    }
}
