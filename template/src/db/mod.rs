//! Connections to PostgreSQL: how one is opened ([`connect`]), the pool that shares them
//! between tenants ([`pool`]), and how migrations run.
//!
//! Every connection is opened on one dedicated multi-thread runtime ([`runtime`]), so
//! that a connection outlives the actix worker that asked for it.

pub mod choose;
pub mod connect;
pub mod migrate;
pub mod observe;
pub mod outages;
pub mod pool;
pub mod pooler;
pub mod runtime;
pub mod settings;
pub mod tls;

use std::sync::{Arc, Mutex};

use diesel::QueryResult;
use diesel::connection::{CacheSize, Instrumentation};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::{ConnectionError, ConnectionResult};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, AsyncPgConnection,
    SimpleAsyncConnection,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use pool::{Home, Pool, PoolError, PooledConnection, SessionScope};
use tls::PgConfig;

/// The schema of the tenant registry (the control plane).
pub const CONTROL_SCHEMA: &str = "tenancy";

/// A connection scoped to one tenant: the only way to reach tenant tables. Handlers get
/// it from the extractor in `tenancy::extract`.
///
/// Behind a pooler in transaction mode it is one transaction, scoped for that
/// transaction alone: in a request, the tenant middleware commits it once the handler has
/// answered with success and rolls it back otherwise (a handler's own `transaction` is a
/// savepoint inside it); elsewhere [`TenantConnection::finish`] ends it, and dropping it
/// unfinished rolls it back.
pub struct TenantConnection {
    conn: Option<PooledConnection>,
    /// Where it goes when dropped, for the request's end to finish it.
    request: Option<RequestTransactions>,
}

impl TenantConnection {
    pub(crate) fn new(conn: PooledConnection, request: Option<RequestTransactions>) -> Self {
        Self {
            conn: Some(conn),
            request,
        }
    }

    /// Whether it had to wait in line for a connection.
    pub fn waited(&self) -> bool {
        self.conn.as_ref().is_some_and(PooledConnection::waited)
    }
{%- if isolation == "rls" %}

    /// The id of the tenant it serves (the same as the scope's `app.tenant_id`).
    pub fn tenant(&self) -> uuid::Uuid {
        self.conn
            .as_ref()
            .map_or_else(uuid::Uuid::nil, PooledConnection::tenant)
    }
{%- endif %}

    /// Commits its transaction (`commit`) or rolls it back; outside a request, in
    /// transaction mode. In session mode statements took effect as they ran.
    pub async fn finish(mut self, commit: bool) -> diesel::QueryResult<()> {
        match self.conn.take() {
            Some(conn) => conn.finish(commit).await,
            None => Ok(()),
        }
    }
}

impl TenantConnection {
    fn pooled(&mut self) -> &mut PooledConnection {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only when finished or dropped"))
    }

    fn raw(&mut self) -> &mut AsyncPgConnection {
        self.pooled()
    }
}

// A `TenantConnection` is a diesel connection of its own, not a way to the connection it
// wraps: every statement goes through `PooledConnection::run`, which in transaction mode
// sends the checkout's `BEGIN` and scope with the first one.

impl SimpleAsyncConnection for TenantConnection {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let conn = self.pooled();
        let failure = conn.failure();
        let result = conn.batch(query).await;
        match failure {
            Some(failure) => failure.check(result),
            None => result,
        }
    }
}

impl AsyncConnectionCore for TenantConnection {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<Self::Stream<'conn, 'query>>>;
    type Stream<'conn, 'query> = <AsyncPgConnection as AsyncConnectionCore>::Stream<'conn, 'query>;
    type Row<'conn, 'query> = <AsyncPgConnection as AsyncConnectionCore>::Row<'conn, 'query>;
    type Backend = diesel::pg::Pg;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let conn = self.pooled();
        let Some(failure) = conn.failure() else {
            return conn.run(|mut conn| conn.load(source));
        };
        let load = conn.run(|mut conn| conn.load(source));
        Box::pin(async move {
            // A statement's error may come with its first row or any later one.
            let rows = failure.check(load.await)?;
            Ok(rows.map(move |row| failure.check(row)).boxed())
        })
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let conn = self.pooled();
        let failure = conn.failure();
        let execute = conn.run(|mut conn| conn.execute_returning_count(source));
        match failure {
            Some(failure) => Box::pin(execute.map(move |result| failure.check(result))),
            None => execute,
        }
    }
}

impl AsyncConnection for TenantConnection {
    type TransactionManager = AnsiTransactionManager;

    async fn establish(_: &str) -> ConnectionResult<Self> {
        Err(ConnectionError::BadConnection(
            "a TenantConnection comes from the pool, scoped to its tenant".into(),
        ))
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        self.raw().transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.raw().instrumentation()
    }

    /// The pool's own stays (slow statements, error counts): the connection outlives this
    /// checkout and serves other tenants next.
    fn set_instrumentation(&mut self, _: impl Instrumentation) {}

    /// The pool decides: behind a transaction pooler no statement may outlive its
    /// transaction.
    fn set_prepared_statement_cache_size(&mut self, _: CacheSize) {}
}

impl Drop for TenantConnection {
    fn drop(&mut self) {
        if let (Some(conn), Some(request)) = (self.conn.take(), &self.request) {
            request.hold(conn);
        }
    }
}

/// The open transactions of one request's tenant connections (transaction mode), which
/// the tenant middleware ends when the handler has answered. Dropped unended, they are
/// rolled back.
#[derive(Clone, Default)]
pub struct RequestTransactions(Arc<Mutex<Vec<PooledConnection>>>);

impl RequestTransactions {
    fn hold(&self, conn: PooledConnection) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(conn);
    }

    /// Commits every transaction (`commit`) or rolls them back; the first error, if any.
    pub async fn finish(&self, commit: bool) -> diesel::QueryResult<()> {
        let held = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let mut result = Ok(());
        for conn in held {
            let ended = conn.finish(commit).await;
            if result.is_ok() {
                result = ended;
            }
        }
        result
    }
}

/// The control plane's pool (tenant registry, health, admin). Its connections have
/// `search_path=tenancy`, so an unqualified tenant table does not resolve on them.
///
/// Behind a pooler in transaction mode a checkout is a transaction too (with that
/// `search_path`): code that writes ends it with `finish(true)`; dropped, it is rolled back.
#[derive(Clone)]
pub struct ControlPool {
    pool: Pool,
    config: PgConfig,
    /// Transaction mode: what each transaction is scoped to.
    scope: Option<SessionScope>,
}

/// A connection of the control pool.
pub type ControlConnection = PooledConnection;

impl ControlPool {
    pub fn new(pool: Pool, config: PgConfig) -> Self {
        let scope = (!config.takes_start_up_options()).then(|| SessionScope {
            tenant: uuid::Uuid::nil(),
            search_path: format!("\"{CONTROL_SCHEMA}\""),
        });
        Self {
            pool,
            config,
            scope,
        }
    }

    pub async fn get(&self) -> Result<ControlConnection, PoolError> {
        let mut conn = self
            .pool
            .get(
                uuid::Uuid::nil(),
                Home::Shared,
                self.scope.as_ref(),
                pool::Limits::default(),
                || async { Ok(self.config.clone()) },
            )
            .await?;
        // Its scope is sent now: registry code uses the connection itself.
        conn.open().await.map_err(PoolError::Scope)?;
        Ok(conn)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// How its connections are opened.
    pub fn config(&self) -> &PgConfig {
        &self.config
    }
}
