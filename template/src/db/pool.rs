//! The connection pool: one bounded set of PostgreSQL connections, each of which knows
//! which tenant's scope it carries.
//!
//! bb8 and its peers hand out whichever idle connection comes first; a multi-tenant
//! service needs to choose: the idle connection already scoped to the request's tenant,
//! else the one the tenant prefers to re-scope (see `Key`), else (one database per
//! tenant) the least recently used idle connection of another tenant, closed to make
//! room. When none is free, a checkout waits in line, and each connection that comes back
//! (or slot that frees) is handed to the next waiter, tenant by tenant. Those choices are
//! pure functions in `choose`; this module moves the connections; opening one is
//! `connect`.
//!
//! Behind a pooler in transaction mode (`TENANCY_POOLER=transaction`) no scope lives on a
//! session: every checkout is a transaction whose first statements set the scope for that
//! transaction alone (`SET LOCAL`, `set_config(name, value, true)`), ended by
//! [`PooledConnection::finish`] (commit or roll back) or, when the connection is dropped
//! unfinished, rolled back. `BEGIN` and the scope statements wait for the checkout's first
//! statement and go in one flight with it ([`PooledConnection::run`]): a checkout that
//! runs nothing sends nothing.
//!
//! The scope-tracking invariant: a connection's `scope` names a tenant only after the
//! statement that set that scope succeeded on it. It is cleared before a re-scope is
//! sent, so a re-scope that fails, is cancelled or panics leaves a connection with no
//! known scope, which is re-scoped again before any tenant gets it. A connection that
//! comes back broken, inside a transaction, or while its handler panics is closed, never
//! reused.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use diesel::connection::TransactionDepthChange;
use diesel::sql_types::{Bool, Text};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
    TransactionManager,
};
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use uuid::Uuid;

pub use super::choose::Home;
use super::choose::{Choice, Fit, Key, Slot, Ticket, WaitQueue, Want, choose, fit};
use super::connect::{ConnectError, PgConn, connect};
use super::observe::{ErrorCounts, Observer, OnLostStatement, lost_statement};
use super::pooler::Backend;
use super::settings::Pooler;
use super::tls::PgConfig;

diesel::define_sql_function! {
    /// PostgreSQL's `set_config(name, value, is_local)`: `SET` takes no bind parameters.
    fn set_config(name: Text, value: Text, is_local: Bool) -> Text;
}

diesel::define_sql_function! {
    /// The process id of the server session that runs the statement.
    fn pg_backend_pid() -> Integer;
}

diesel::define_sql_function! {
    /// When the server started: with the process id, one server session.
    fn pg_postmaster_start_time() -> Timestamptz;
}

/// A new connection's own number (see `choose::Key`).
fn new_key() -> Key {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Key(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What makes a connection of the shared database serve one tenant: its `search_path`
/// (a quoted schema name) and `app.tenant_id`, set together by one statement.
#[derive(Debug, Clone)]
pub struct SessionScope {
    pub tenant: Uuid,
    pub search_path: String,
}

/// The setting that Row-Level Security policies read.
pub const TENANT_SETTING: &str = "app.tenant_id";

/// The statement that makes `tenant` the tenant of the current transaction alone.
///
/// `SET LOCAL`, not `set_config`: it is the one form that Citus (distributed PostgreSQL,
/// with `citus.propagate_set_commands = 'local'`) passes on to the nodes that hold the
/// rows, where the policies read it. `SET` takes no bind parameter, so the value is
/// written into the statement: a `Uuid`, formatted here, is hex digits and hyphens only.
pub fn set_tenant_locally(tenant: Uuid) -> String {
    format!("SET LOCAL {TENANT_SETTING} = '{}'", tenant.hyphenated())
}

/// How much longer than the statement timeout the service waits for PostgreSQL's answer:
/// a server that cannot answer (frozen, or cut off by the network) cannot time out a
/// statement itself.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// The error of a statement PostgreSQL did not answer in time: an outage (503).
fn no_answer(limit: Duration) -> diesel::result::Error {
    diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::ClosedConnection,
        Box::new(format!(
            "PostgreSQL did not answer within {} s: the connection was closed",
            limit.as_secs()
        )),
    )
}

/// Why no connection could be checked out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no database connection became free within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("could not set the connection's tenant scope: {0}")]
    Scope(diesel::result::Error),
    /// A query needed to open the connection failed (e.g. reading where a tenant lives).
    #[error("{0}")]
    Query(#[from] diesel::result::Error),
    /// The isolation strategy refuses to serve this tenant (a configuration error).
    #[error("{0}")]
    Isolation(String),
    /// The connections lead to a pooler in transaction mode, which the session mode
    /// cannot use safely: nothing is served until the service is restarted.
    #[error("{0}")]
    SharedSessions(String),
}

/// Sizes and timeouts of one pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections open at most (each holds a permit until the server closed it).
    pub max_connections: u32,
    /// Connections one tenant may hold at once.
    pub per_tenant: u32,
    /// How long a checkout waits before it fails.
    pub wait: Duration,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// A connection is closed (when idle) after this long.
    pub max_lifetime: Duration,
    /// After PostgreSQL refused a connection for lack of slots (SQLSTATE 53300), the pool
    /// does not try to grow for this long.
    pub backoff: Duration,
    /// Statements that take longer are logged (`None`: none is).
    pub slow_statement: Option<Duration>,
    /// Session mode: a scope is set on a connection once and kept. Transaction mode: every
    /// checkout is a transaction scoped on its own.
    pub pooler: Pooler,
    /// The statement timeout of checkouts whose tenant has none of its own: set when
    /// connecting, with a session's scope, or in every transaction (transaction mode).
    pub statement_timeout: Duration,
}

/// What one checkout's tenant may use, where it differs from the pool's settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// The most connections the tenant holds at once (else `per_tenant`).
    pub connections: Option<u32>,
    /// Its statement timeout (else `statement_timeout`).
    pub statement_timeout: Option<Duration>,
}

/// What `/health` and the tests see of a pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStats {
    pub max_connections: u32,
    pub open_connections: u32,
    pub idle_connections: u32,
    pub in_use: u32,
    /// Checkouts waiting in line now.
    pub waiting: u32,
    /// Checkouts that waited in line since start.
    pub waited: u64,
    /// Connections opened since start.
    pub opened: u64,
    /// Checkouts served by a connection that already carried the tenant's scope.
    pub reused: u64,
    /// Checkouts that re-scoped an idle connection.
    pub rescoped: u64,
    /// Idle connections of another tenant closed to make room (database per tenant).
    pub evicted: u64,
    /// Failures since start, by kind: connecting (`unreachable`, `refused`,
    /// `too_many_connections`, `setup`), waiting (`pool_timeout`), statements
    /// (`connection_lost`, `statement_timeout`, `constraint`, `serialization`, `other`).
    pub errors: std::collections::BTreeMap<&'static str, u64>,
}

struct Idle {
    conn: PgConn,
    slot: Slot,
    /// Session mode: the `search_path` of its scope (a hybrid tenant's changes with its
    /// tier, while its scope's tenant stays the same).
    search_path: Option<String>,
    /// Session mode: the server session its scope statements ran on.
    backend: Option<Backend>,
    opened: Instant,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Least recently returned first.
    idle: VecDeque<Idle>,
    /// Connections checked out (or being set up), per tenant.
    in_use: HashMap<Uuid, u32>,
    /// Set when PostgreSQL refused a connection for lack of slots.
    limited: Option<Limit>,
    /// The checkouts waiting for a connection, in the order they are served.
    queue: WaitQueue,
    /// Where each of them is handed its connection.
    waiters: HashMap<Ticket, Waiter>,
}

/// A checkout in line.
struct Waiter {
    want: Want,
    handoff: oneshot::Sender<Handoff>,
}

/// What a waiting checkout is handed, counted in its tenant's share already: an idle
/// connection, or the right to open one.
enum Handoff {
    Idle(Box<Idle>),
    Open(OwnedSemaphorePermit),
}

#[derive(Debug, Clone)]
struct Limit {
    /// Connections this pool had open when PostgreSQL refused one more.
    open: u32,
    until: Instant,
    reason: String,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    reused: AtomicU64,
    rescoped: AtomicU64,
    evicted: AtomicU64,
    /// Checkouts that had to wait in line.
    waited: AtomicU64,
}

impl PoolError {
    /// The kind this failure counts as (`ErrorCounts`); `None` for failures of a statement,
    /// which the connection's observer counts itself.
    fn kind(&self) -> Option<&'static str> {
        match self {
            PoolError::TimedOut(_) => Some("pool_timeout"),
            PoolError::Connect(ConnectError::Unreachable { .. }) => Some("unreachable"),
            PoolError::Connect(error) if error.is_too_many_connections() => {
                Some("too_many_connections")
            }
            PoolError::Connect(ConnectError::Refused { .. }) => Some("refused"),
            PoolError::Connect(_) => Some("setup"),
            PoolError::Scope(_)
            | PoolError::Query(_)
            | PoolError::Isolation(_)
            | PoolError::SharedSessions(_) => None,
        }
    }
}

struct Shared {
    name: &'static str,
    settings: PoolSettings,
    state: Mutex<State>,
    sockets: Arc<Semaphore>,
    runtime: Handle,
    counters: Counters,
    /// Failures of this pool and of its connections' statements, by kind.
    errors: Arc<ErrorCounts>,
    /// Set when a connection turned out to share its server session with others (a
    /// pooler in transaction mode): why, naming the setting that fixes it.
    shared_sessions: std::sync::OnceLock<String>,
}

/// A pool of connections; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

/// A checked-out connection; it goes back to its pool when dropped.
pub struct PooledConnection {
    conn: Option<PgConn>,
    pool: Arc<Shared>,
    tenant: Uuid,
    home: Home,
    scope: Option<Uuid>,
    search_path: Option<String>,
    backend: Option<Backend>,
    /// Transaction mode: the transaction of this checkout is open, or about to be (see
    /// `opening`).
    in_transaction: bool,
    /// Transaction mode: the checkout's `BEGIN` and scope statement while they are not
    /// sent yet; they go in one flight with its first statement ([`PooledConnection::run`]).
    opening: Mutex<Option<Opening>>,
    /// Transaction mode: the first statement that failed outside a handler's own
    /// transaction, which aborted the checkout's transaction (see [`Failure`]).
    failure: Option<Failure>,
    /// A statement went unanswered past `answer_within`: the connection's state is
    /// unknown, and it is closed, never reused.
    lost: std::sync::atomic::AtomicBool,
    /// The statement timeout its session carries (session mode; 0 in transaction mode).
    timeout_ms: u64,
    /// Whether the checkout waited in line for it.
    waited: bool,
    /// How long a statement may go unanswered before the connection is given up: the
    /// checkout's statement timeout and a margin (a frozen server cannot time out).
    answer_within: Duration,
    key: Key,
    opened: Instant,
}

/// Where a checkout's statements record the first database error that aborted its
/// transaction (transaction mode): PostgreSQL then ignores the rest, and a `COMMIT` rolls
/// back without an error. [`PooledConnection::finish`] returns it instead of committing, so
/// that no request is answered with success for writes that were lost.
#[derive(Clone, Default)]
pub struct Failure(Arc<std::sync::OnceLock<Failed>>);

impl Failure {
    /// Passes `result` on, recording it if it is the first database error.
    pub fn check<T>(&self, result: diesel::QueryResult<T>) -> diesel::QueryResult<T> {
        if let Err(diesel::result::Error::DatabaseError(kind, info)) = &result {
            let _ = self.0.set(Failed {
                kind: *kind,
                message: info.message().to_owned(),
                constraint: info.constraint_name().map(str::to_owned),
            });
        }
        result
    }

    fn error(&self) -> Option<diesel::result::Error> {
        let failed = self.0.get()?.clone();
        Some(diesel::result::Error::DatabaseError(
            failed.kind,
            Box::new(failed),
        ))
    }
}

/// What is kept of the error: what the service's error mapping reads.
#[derive(Debug, Clone)]
struct Failed {
    kind: diesel::result::DatabaseErrorKind,
    message: String,
    constraint: Option<String>,
}

impl diesel::result::DatabaseErrorInformation for Failed {
    fn message(&self) -> &str {
        &self.message
    }
    fn details(&self) -> Option<&str> {
        None
    }
    fn hint(&self) -> Option<&str> {
        None
    }
    fn table_name(&self) -> Option<&str> {
        None
    }
    fn column_name(&self) -> Option<&str> {
        None
    }
    fn constraint_name(&self) -> Option<&str> {
        self.constraint.as_deref()
    }
    fn statement_position(&self) -> Option<i32> {
        None
    }
}

/// What opens a checkout's transaction (transaction mode): `BEGIN`, then the scope for
/// that transaction alone (`search_path`, `app.tenant_id`, the statement timeout).
struct Opening {
    search_path: String,
    tenant: Uuid,
    timeout: String,
}

impl Opening {
    /// `BEGIN` and the scope statements in one flight: inside the transaction a failed
    /// `BEGIN` or scope fails every statement after it. The tenant goes with `BEGIN`
    /// ([`set_tenant_locally`]).
    async fn send(self, conn: &AsyncPgConnection) -> diesel::QueryResult<()> {
        use diesel_async::RunQueryDsl;

        let (mut begin, mut scoped) = (conn, conn);
        let begin_as_tenant = format!("BEGIN; {}", set_tenant_locally(self.tenant));
        let scope = diesel::select((
            set_config("search_path", self.search_path.as_str(), true),
            set_config("statement_timeout", self.timeout.as_str(), true),
        ))
        .execute(&mut scoped);
        futures_util::future::try_join(begin.batch_execute(&begin_as_tenant), scope)
            .await
            .map(drop)
    }
}

impl PooledConnection {
    /// Ends this checkout's transaction (transaction mode): commits it when `commit`, else
    /// rolls it back. In session mode there is none: statements took effect as they ran.
    /// A connection whose transaction did not end cleanly is closed.
    pub async fn finish(mut self, commit: bool) -> diesel::QueryResult<()> {
        if !std::mem::take(&mut self.in_transaction) {
            return Ok(());
        }
        let opening = take(&mut self.opening);
        let failed = self.failure.take().and_then(|failure| failure.error());
        let Some(conn) = self.conn.as_deref_mut() else {
            return Ok(());
        };
        let limit = self.answer_within;
        let result = match opening {
            // Nothing was sent: there is no transaction to end.
            Some(_) => leave_unopened(conn),
            _ if self.lost.load(Ordering::Relaxed) => Err(no_answer(limit)),
            None => tokio::time::timeout(limit, end_transaction(conn, commit && failed.is_none()))
                .await
                .unwrap_or_else(|_| Err(no_answer(limit))),
        };
        if result.is_err() {
            drop(self.conn.take());
        }
        match failed {
            // Rolled back: what made it fail is the answer.
            Some(error) if commit && result.is_ok() => Err(error),
            _ => result,
        }
    }

    /// Whether its checkout waited in line (every connection was taken, or its tenant held
    /// its limit).
    pub fn waited(&self) -> bool {
        self.waited
    }
{%- if isolation == "rls" %}

    /// The id of the tenant it serves.
    pub fn tenant(&self) -> Uuid {
        self.tenant
    }
{%- endif %}

    /// Where a statement sent now records its database error, if that error would abort
    /// the checkout's transaction: transaction mode, outside a handler's own transaction
    /// (whose savepoint takes the error back).
    pub fn failure(&mut self) -> Option<Failure> {
        let failure = self.failure.clone()?;
        let conn: &mut AsyncPgConnection = self;
        let depth = AnsiTransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth()
            .ok()
            .flatten()
            .map(u32::from);
        (depth == Some(1)).then_some(failure)
    }

    /// Sends the checkout's `BEGIN` and scope statement if they are still waiting for a
    /// first statement (transaction mode); for statements that cannot share their flight.
    pub async fn open(&mut self) -> diesel::QueryResult<()> {
        match take(&mut self.opening) {
            Some(opening) => self.answered(opening.send(self)).await,
            None => Ok(()),
        }
    }

    /// Runs `query` (simple protocol) on this connection, after its scope if that is
    /// still waiting (a batch goes at once, so it cannot share the scope's flight).
    pub async fn batch(&mut self, query: &str) -> diesel::QueryResult<()> {
        self.open().await?;
        let conn: &AsyncPgConnection = self;
        let mut shared = conn;
        self.answered(shared.batch_execute(query)).await
    }

    /// `statement`'s result, unless PostgreSQL does not answer in time: then the
    /// connection is lost (closed when it goes back) and the statement fails as an outage.
    async fn answered<T>(
        &self,
        statement: impl Future<Output = diesel::QueryResult<T>>,
    ) -> diesel::QueryResult<T> {
        let limit = self.answer_within;
        match tokio::time::timeout(limit, statement).await {
            Ok(result) => result,
            Err(_) => {
                self.lost.store(true, Ordering::Relaxed);
                self.pool.errors.count("connection_lost");
                Err(no_answer(limit))
            }
        }
    }

    /// Runs `statement` on this connection. The first statement of a checkout in
    /// transaction mode goes in one flight with its `BEGIN` and scope statement, sent
    /// first: the server runs them in the order they arrive, and a failed scope fails the
    /// statement with the transaction. They are taken when the statement is first polled,
    /// so a statement dropped unpolled leaves them to the next. `statement` must send
    /// nothing before it is polled.
    pub fn run<'a, R: Send + 'a>(
        &'a mut self,
        statement: impl FnOnce(&'a AsyncPgConnection) -> BoxFuture<'a, diesel::QueryResult<R>>,
    ) -> BoxFuture<'a, diesel::QueryResult<R>> {
        let opened = self
            .opening
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_none();
        let this: &'a PooledConnection = self;
        let statement = statement(this);
        if opened {
            return Box::pin(this.answered(statement));
        }
        Box::pin(this.answered(async move {
            let opening = (this.opening.lock())
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            match opening {
                Some(opening) => futures_util::future::try_join(opening.send(this), statement)
                    .await
                    .map(|(_, result)| result),
                None => statement.await,
            }
        }))
    }
}

fn take(opening: &mut Mutex<Option<Opening>>) -> Option<Opening> {
    opening.get_mut().unwrap_or_else(|p| p.into_inner()).take()
}

/// Undoes what `begin` told diesel of a transaction that was never sent.
fn leave_unopened(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_state()?
        .change_transaction_depth(TransactionDepthChange::DecreaseDepth)
}

/// Commits or rolls back the transaction a checkout began. A handler's own transaction
/// left open under it (a savepoint) is an error: that connection's state is unknown.
async fn end_transaction(conn: &mut AsyncPgConnection, commit: bool) -> diesel::QueryResult<()> {
    let depth = AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()?
        .map(u32::from);
    if depth != Some(1) {
        return Err(diesel::result::Error::QueryBuilderError(
            format!("a checkout's transaction ended at depth {depth:?}, not 1").into(),
        ));
    }
    if commit {
        AnsiTransactionManager::commit_transaction(conn).await
    } else {
        AnsiTransactionManager::rollback_transaction(conn).await
    }
}

impl std::ops::Deref for PooledConnection {
    type Target = AsyncPgConnection;
    fn deref(&self) -> &Self::Target {
        self.conn
            .as_deref()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl std::ops::DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let conn = self.conn.take();
        {
            // The tenant's share is given back first: its waiters may take what follows.
            let mut state = self.pool.lock();
            state.release(self.tenant);
            self.pool.dispatch(&mut state);
        }
        if let Some(conn) = conn {
            let mut idle = Idle {
                conn,
                slot: Slot {
                    home: self.home,
                    scope: self.scope,
                    timeout_ms: self.timeout_ms,
                    key: self.key,
                },
                search_path: self.search_path.take(),
                backend: self.backend.take(),
                opened: self.opened,
                since: Instant::now(),
            };
            // A transaction that was never sent needs no rollback, only diesel told so.
            let unsent = take(&mut self.opening).is_some();
            let clean = !self.lost.load(Ordering::Relaxed)
                && (!unsent || leave_unopened(&mut idle.conn).is_ok());
            if std::thread::panicking() || !clean {
                // Closed.
            } else if self.in_transaction && !unsent && !idle.conn.is_closed() {
                // Dropped unfinished (transaction mode): rolled back before anyone reuses it.
                let pool = self.pool.clone();
                let limit = self.answer_within;
                self.pool.runtime.spawn(async move {
                    let rollback = end_transaction(&mut idle.conn, false);
                    if let Ok(Ok(())) = tokio::time::timeout(limit, rollback).await {
                        pool.keep(idle);
                    }
                });
            } else {
                self.pool.keep(idle);
            }
            // Else closed: a slot frees once the server has closed its end.
        }
    }
}

/// What to do after looking at the pool's state.
enum Step {
    /// Served, counted in the tenant's share.
    Served(Handoff),
    /// Close this idle connection of another database to open one (not counted yet).
    Evict(Box<Idle>),
    /// Wait in line.
    Wait(Ticket, oneshot::Receiver<Handoff>),
}

/// A checkout in line; dropped (given up, or the request cancelled), it leaves the line,
/// and what it was handed meanwhile goes back to the pool.
struct InLine<'a> {
    pool: &'a Shared,
    tenant: Uuid,
    ticket: Ticket,
    handoff: oneshot::Receiver<Handoff>,
}

impl InLine<'_> {
    /// What it is handed before `deadline`; `None` when nothing was.
    async fn served(mut self, deadline: tokio::time::Instant) -> Option<Handoff> {
        let handoff = tokio::time::timeout_at(deadline, &mut self.handoff).await;
        // Handed over as the deadline passed: given back to the pool (see `drop`).
        handoff.ok()?.ok()
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        if state.queue.leave(self.tenant, self.ticket) {
            state.waiters.remove(&self.ticket);
        } else if let Ok(handoff) = self.handoff.try_recv() {
            state.release(self.tenant);
            match handoff {
                Handoff::Idle(idle) => state.idle.push_back(*idle),
                // Its slot is free again before the next checkout in line is served.
                Handoff::Open(permit) => drop(permit),
            }
            self.pool.dispatch(&mut state);
        }
    }
}

impl Pool {
    pub fn new(name: &'static str, settings: PoolSettings, runtime: Handle) -> Self {
        let sockets = Arc::new(Semaphore::new(settings.max_connections as usize));
        let shared = Arc::new(Shared {
            name,
            settings,
            state: Mutex::new(State::default()),
            sockets,
            runtime: runtime.clone(),
            counters: Counters::default(),
            errors: Arc::default(),
            shared_sessions: std::sync::OnceLock::new(),
        });
        runtime.spawn(close_idle_connections(Arc::downgrade(&shared)));
        Self { shared }
    }

    /// A connection for `tenant`, within `limits` (else the pool's settings): one of
    /// `home` already carrying `scope` and the statement timeout, else one of `home`
    /// re-scoped to it (with a scope), else a new one opened with `open()`'s settings.
    /// When none is free, it waits in line (see `choose::WaitQueue`). `open` is awaited
    /// only when a connection must be opened. A failure is counted by kind.
    pub async fn get<F>(
        &self,
        tenant: Uuid,
        home: Home,
        scope: Option<&SessionScope>,
        limits: Limits,
        open: impl Fn() -> F,
    ) -> Result<PooledConnection, PoolError>
    where
        F: Future<Output = Result<PgConfig, PoolError>>,
    {
        let mut waited = false;
        let got = self
            .checkout(tenant, home, scope, limits, open, &mut waited)
            .await;
        if let Some(kind) = got.as_ref().err().and_then(PoolError::kind) {
            self.shared.errors.count(kind);
        }
        got.map(|mut conn| {
            conn.waited = waited;
            conn
        })
    }

    async fn checkout<F>(
        &self,
        tenant: Uuid,
        home: Home,
        scope: Option<&SessionScope>,
        limits: Limits,
        open: impl Fn() -> F,
        waited: &mut bool,
    ) -> Result<PooledConnection, PoolError>
    where
        F: Future<Output = Result<PgConfig, PoolError>>,
    {
        let shared = &self.shared;
        let timeout = limits
            .statement_timeout
            .unwrap_or(shared.settings.statement_timeout);
        let deadline = tokio::time::Instant::now() + shared.settings.wait;
        let per_transaction = shared.settings.pooler == Pooler::Transaction;
        // Per transaction, no connection carries a scope between checkouts.
        let session_scope = scope.filter(|_| !per_transaction);
        let want = Want {
            tenant,
            home,
            scope: session_scope.map(|s| s.tenant),
            // Per transaction, every transaction sets it.
            timeout_ms: match per_transaction {
                true => 0,
                false => timeout.as_millis() as u64,
            },
            can_rescope: session_scope.is_some(),
            in_use: 0,
            limit: limits
                .connections
                .unwrap_or(shared.settings.per_tenant)
                .max(1),
        };
        loop {
            if let Some(why) = shared.shared_sessions.get() {
                return Err(PoolError::SharedSessions(why.clone()));
            }
            let served = self.handoff(want, deadline, waited).await?;
            // From here on the connection counts in the tenant's share: the guard gives it
            // back if this fails.
            let (mut guard, permit) = match served {
                Handoff::Idle(idle) => match fit(&want, [&idle.slot]) {
                    // Scoped to another tenant, or to this one with another `search_path`
                    // (a hybrid tenant whose tier changed): re-scoped.
                    Some((_, found @ (Fit::Use | Fit::Rescope)))
                        if matches!(found, Fit::Rescope)
                            || session_scope.is_some_and(|s| {
                                idle.search_path.as_deref() != Some(s.search_path.as_str())
                            }) =>
                    {
                        let (Some(mut guard), Some(scope)) =
                            (shared.hand_out(tenant, home, *idle, timeout), session_scope)
                        else {
                            continue;
                        };
                        match shared.set_scope(&mut guard, scope, timeout).await {
                            Ok(()) => return Ok(guard),
                            Err(error @ PoolError::SharedSessions(_)) => return Err(error),
                            // The connection failed (e.g. it died with the server) before
                            // any of the request reached the server: try another one.
                            Err(_) if tokio::time::Instant::now() < deadline => continue,
                            Err(error) => return Err(error),
                        }
                    }
                    Some((_, Fit::Use)) => match shared.hand_out(tenant, home, *idle, timeout) {
                        Some(mut guard) if per_transaction => {
                            shared.begin(&mut guard, scope, timeout)?;
                            return Ok(guard);
                        }
                        Some(guard) => {
                            shared.counters.reused.fetch_add(1, Ordering::Relaxed);
                            return Ok(guard);
                        }
                        None => continue,
                    },
                    // Handed a connection of another database: it makes room for one.
                    _ => {
                        let guard = shared.empty_guard(&want, timeout);
                        match shared.evict(*idle, deadline).await {
                            Some(permit) => (guard, permit),
                            None => return Err(PoolError::TimedOut(shared.settings.wait)),
                        }
                    }
                },
                Handoff::Open(permit) => (shared.empty_guard(&want, timeout), permit),
            };
            let config = open().await?;
            if shared.open_into(&mut guard, config, permit).await? {
                if per_transaction {
                    shared.begin(&mut guard, scope, timeout)?;
                } else if let Some(scope) = scope {
                    shared.set_scope(&mut guard, scope, timeout).await?;
                }
                return Ok(guard);
            }
            // Over the server's max_connections: served by the connections already open,
            // or 503 in time.
        }
    }

    /// What a checkout is handed next: a connection of the pool, or room to open one,
    /// after waiting in line if need be (`waited`); `TimedOut` at `deadline`.
    async fn handoff(
        &self,
        want: Want,
        deadline: tokio::time::Instant,
        waited: &mut bool,
    ) -> Result<Handoff, PoolError> {
        let shared = &self.shared;
        let handoff = match shared.next_step(want) {
            Step::Served(handoff) => Some(handoff),
            Step::Evict(idle) => shared.evict(*idle, deadline).await.map(|permit| {
                *shared.lock().in_use.entry(want.tenant).or_default() += 1;
                Handoff::Open(permit)
            }),
            Step::Wait(ticket, handoff) => {
                shared.counters.waited.fetch_add(1, Ordering::Relaxed);
                *waited = true;
                let in_line = InLine {
                    pool: shared,
                    tenant: want.tenant,
                    ticket,
                    handoff,
                };
                in_line.served(deadline).await
            }
        };
        handoff.ok_or(PoolError::TimedOut(shared.settings.wait))
    }

    /// Closes the idle connections of `home` (a tenant's database that is being dropped).
    pub fn close_idle(&self, home: Home) {
        let closed: VecDeque<Idle> = {
            let mut state = self.shared.lock();
            let (keep, close) = state
                .idle
                .drain(..)
                .partition(|idle| idle.slot.home != home);
            state.idle = keep;
            close
        };
        drop(closed);
    }

    /// Why this pool refuses every checkout, if it does (its connections share server
    /// sessions: a pooler in transaction mode).
    pub fn refused(&self) -> Option<String> {
        self.shared.shared_sessions.get().cloned()
    }

    /// The pool's numbers, and whether PostgreSQL limits it (SQLSTATE 53300) right now.
    pub fn stats(&self) -> (PoolStats, Option<String>) {
        let shared = &self.shared;
        let state = shared.lock();
        let max = shared.settings.max_connections;
        let limited = state
            .limited
            .as_ref()
            .filter(|limit| limit.until > Instant::now())
            .map(|limit| limit.reason.clone());
        let stats = PoolStats {
            max_connections: max,
            open_connections: max - shared.sockets.available_permits() as u32,
            idle_connections: state.idle.len() as u32,
            in_use: state.in_use.values().sum(),
            waiting: state.queue.len() as u32,
            waited: shared.counters.waited.load(Ordering::Relaxed),
            opened: shared.counters.opened.load(Ordering::Relaxed),
            reused: shared.counters.reused.load(Ordering::Relaxed),
            rescoped: shared.counters.rescoped.load(Ordering::Relaxed),
            evicted: shared.counters.evicted.load(Ordering::Relaxed),
            errors: shared.errors.snapshot(),
        };
        (stats, limited)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes `idle` (of another database) to make room, and waits until `deadline` for
    /// the slot it frees. The wait is registered before the connection closes, so that the
    /// slot comes back here and not to a checkout in line (`dispatch`).
    async fn evict(
        self: &Arc<Self>,
        idle: Idle,
        deadline: tokio::time::Instant,
    ) -> Option<OwnedSemaphorePermit> {
        let mut slot = std::pin::pin!(self.sockets.clone().acquire_owned());
        let first = std::future::poll_fn(|cx| Poll::Ready(slot.as_mut().poll(cx))).await;
        if let Poll::Ready(permit) = first {
            // A slot was free after all: the connection stays.
            self.keep(idle);
            return permit.ok();
        }
        self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        drop(idle);
        tokio::time::timeout_at(deadline, slot).await.ok()?.ok()
    }

    /// Whether the pool may open more connections now (PostgreSQL did not just refuse).
    fn may_grow(&self, state: &State) -> bool {
        let open = self.settings.max_connections - self.sockets.available_permits() as u32;
        match &state.limited {
            Some(limit) if limit.until > Instant::now() => open < limit.open,
            _ => true,
        }
    }

    /// Decides how to serve a checkout (see `choose`); counts it in the tenant's share
    /// when it is served, puts it in line when it is not.
    fn next_step(&self, mut want: Want) -> Step {
        let mut state = self.lock();
        want.in_use = state.in_use.get(&want.tenant).copied().unwrap_or(0);
        // Nobody jumps the line: with a checkout of a tenant under its limit in line, no
        // connection is free (`dispatch` hands out each one that frees).
        let permit = self
            .may_grow(&state)
            .then(|| self.sockets.clone().try_acquire_owned().ok())
            .flatten();
        let idle = state.idle.iter().map(|idle| &idle.slot);
        let served = match choose(&want, idle, permit.is_some()) {
            Choice::Take(i, Fit::Evict) => {
                return match state.idle.remove(i) {
                    Some(idle) => Step::Evict(Box::new(idle)),
                    None => unreachable!("chosen from the idle connections"),
                };
            }
            Choice::Take(i, _) => match state.idle.remove(i) {
                Some(idle) => Handoff::Idle(Box::new(idle)),
                None => unreachable!("chosen from the idle connections"),
            },
            Choice::Open => match permit {
                Some(permit) => Handoff::Open(permit),
                None => unreachable!("chosen only with a permit"),
            },
            Choice::Wait => {
                let ticket = state.queue.join(want.tenant, want.limit);
                let (handoff, receiver) = oneshot::channel();
                state.waiters.insert(ticket, Waiter { want, handoff });
                return Step::Wait(ticket, receiver);
            }
        };
        *state.in_use.entry(want.tenant).or_default() += 1;
        Step::Served(served)
    }

    /// Hands what is free (idle connections, room for new ones) to the checkouts in line,
    /// in the order `WaitQueue::next` says; called whenever a connection or a tenant's
    /// share comes back.
    fn dispatch(&self, state: &mut State) {
        while !state.queue.is_empty() {
            let permit = self
                .may_grow(state)
                .then(|| self.sockets.clone().try_acquire_owned().ok())
                .flatten();
            if state.idle.is_empty() && permit.is_none() {
                return;
            }
            let in_use = &state.in_use;
            let Some((tenant, ticket)) = state
                .queue
                .next(|tenant| in_use.get(&tenant).copied().unwrap_or(0))
            else {
                return;
            };
            let Some(waiter) = state.waiters.remove(&ticket) else {
                continue;
            };
            let handoff = match (
                fit(&waiter.want, state.idle.iter().map(|i| &i.slot)),
                permit,
            ) {
                // Room for a new connection serves better than closing another database's.
                (None | Some((_, Fit::Evict)), Some(permit)) => Handoff::Open(permit),
                (Some((i, _)), _) => match state.idle.remove(i) {
                    Some(idle) => Handoff::Idle(Box::new(idle)),
                    None => unreachable!("chosen from the idle connections"),
                },
                (None, None) => unreachable!("an idle connection or a permit is there"),
            };
            match waiter.handoff.send(handoff) {
                Ok(()) => *state.in_use.entry(tenant).or_default() += 1,
                // It gave up meanwhile.
                Err(Handoff::Idle(idle)) => state.idle.push_back(*idle),
                Err(Handoff::Open(_)) => {}
            }
        }
    }

    fn guard(
        self: &Arc<Self>,
        tenant: Uuid,
        home: Home,
        conn: Option<PgConn>,
        scope: Option<Uuid>,
        key: Key,
        opened: Instant,
    ) -> PooledConnection {
        PooledConnection {
            conn,
            pool: self.clone(),
            tenant,
            home,
            scope,
            search_path: None,
            backend: None,
            in_transaction: false,
            opening: Mutex::new(None),
            failure: None,
            lost: std::sync::atomic::AtomicBool::new(false),
            timeout_ms: 0,
            waited: false,
            answer_within: self.settings.statement_timeout + ANSWER_MARGIN,
            key,
            opened,
        }
    }

    /// A guard for an idle connection taken for `tenant`, unless the connection broke
    /// while idle (closed by the server, e.g. a restart): that one is closed instead.
    fn hand_out(
        self: &Arc<Self>,
        tenant: Uuid,
        home: Home,
        idle: Idle,
        timeout: Duration,
    ) -> Option<PooledConnection> {
        let Idle {
            mut conn,
            slot:
                Slot {
                    scope,
                    key,
                    timeout_ms,
                    ..
                },
            search_path,
            backend,
            opened,
            ..
        } = idle;
        let broken = conn.is_broken();
        let conn = (!broken).then_some(conn);
        let mut guard = self.guard(tenant, home, conn, scope, key, opened);
        guard.search_path = search_path;
        guard.backend = backend;
        guard.timeout_ms = timeout_ms;
        guard.answer_within = timeout + ANSWER_MARGIN;
        if broken { None } else { Some(guard) }
    }

    async fn open(
        self: &Arc<Self>,
        config: PgConfig,
        permit: OwnedSemaphorePermit,
    ) -> Result<PgConn, ConnectError> {
        let pool = Arc::downgrade(self);
        // Its slot is free: a checkout in line may open one.
        let on_close = Box::new(move || {
            if let Some(pool) = pool.upgrade() {
                let mut state = pool.lock();
                pool.dispatch(&mut state);
            }
        });
        let mut conn = connect(config, &self.runtime, Some(permit), Some(on_close)).await?;
        // A session's scope lives as long as its statements: one lost shows a pooler.
        let pool = Arc::downgrade(self);
        let on_lost_statement: Option<OnLostStatement> = (self.settings.pooler == Pooler::Session)
            .then(|| -> OnLostStatement {
                Box::new(move |message| {
                    if let Some(pool) = pool.upgrade() {
                        pool.sessions_are_shared(message);
                    }
                })
            });
        conn.set_instrumentation(Observer::new(
            self.settings.slow_statement,
            self.errors.clone(),
            on_lost_statement,
        ));
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// Where a checkout starts: no connection yet, the tenant's share counted.
    fn empty_guard(self: &Arc<Self>, want: &Want, timeout: Duration) -> PooledConnection {
        let (tenant, home) = (want.tenant, want.home);
        let mut guard = self.guard(tenant, home, None, None, new_key(), Instant::now());
        guard.timeout_ms = want.timeout_ms;
        guard.answer_within = timeout + ANSWER_MARGIN;
        guard
    }

    /// Opens a connection into `guard`: `false` when the server has none to spare (its
    /// `max_connections`), which lowers this pool's limit to the connections it holds.
    async fn open_into(
        self: &Arc<Self>,
        guard: &mut PooledConnection,
        config: PgConfig,
        permit: OwnedSemaphorePermit,
    ) -> Result<bool, PoolError> {
        match self.open(config, permit).await {
            Ok(conn) => {
                guard.conn = Some(conn);
                Ok(true)
            }
            Err(error) if error.is_too_many_connections() => {
                self.errors.count("too_many_connections");
                self.limit(&error);
                Ok(false)
            }
            Err(error) => {
                tracing::warn!(pool = self.name, error = %error,
                    sqlstate = error.sqlstate().map(|s| s.code()), "database connection failed");
                Err(error.into())
            }
        }
    }

    /// Sets `scope` on the guard's connection; the guard records it only on success.
    async fn set_scope(
        &self,
        guard: &mut PooledConnection,
        scope: &SessionScope,
        timeout: Duration,
    ) -> Result<(), PoolError> {
        use diesel_async::RunQueryDsl;

        guard.scope = None;
        guard.search_path = None;
        let limit = guard.answer_within;
        let tenant = scope.tenant.to_string();
        let timeout_ms = timeout.as_millis().to_string();
        let result = diesel::select((
            set_config("search_path", scope.search_path.as_str(), false),
            set_config(TENANT_SETTING, tenant.as_str(), false),
            set_config("statement_timeout", timeout_ms.as_str(), false),
            pg_backend_pid(),
            pg_postmaster_start_time(),
        ))
        .get_result::<(String, String, String, i32, chrono::DateTime<chrono::Utc>)>(&mut **guard);
        let result = tokio::time::timeout(limit, result)
            .await
            .unwrap_or_else(|_| Err(no_answer(limit)));
        match result {
            Ok((_, _, _, pid, server_started)) => {
                let now = Backend {
                    pid,
                    server_started: server_started.timestamp_micros(),
                };
                if let Some(before) = guard.backend
                    && before != now
                {
                    drop(guard.conn.take());
                    return Err(self.sessions_are_shared(&format!(
                        "one connection's scope statements ran on two server sessions \
                         (processes {} and {})",
                        before.pid, now.pid
                    )));
                }
                guard.backend = Some(now);
                guard.scope = Some(scope.tenant);
                guard.search_path = Some(scope.search_path.clone());
                guard.timeout_ms = timeout.as_millis() as u64;
                self.counters.rescoped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                // Its state is unknown: close it. The guard gives the tenant's share back.
                drop(guard.conn.take());
                if let Some(message) = lost_statement(&error) {
                    return Err(self.sessions_are_shared(message));
                }
                Err(PoolError::Scope(error))
            }
        }
    }

    /// Records (once) that this pool's connections share server sessions, so that no
    /// tenant is served with a scope another client may have changed.
    fn sessions_are_shared(&self, evidence: &str) -> PoolError {
        let why = format!(
            "the database connections lead to a pooler in transaction mode ({evidence}): \
             tenant scopes set on a session would reach other clients, so no tenant is \
             served; set TENANCY_POOLER=transaction, or connect to PostgreSQL directly or \
             through a pooler in session mode"
        );
        if self.shared_sessions.set(why.clone()).is_ok() {
            tracing::error!(pool = self.name, reason = %why, "refusing to serve tenants");
        }
        PoolError::SharedSessions(why)
    }

    /// Transaction mode: makes the guard's checkout a transaction scoped to `scope` (none:
    /// a database of the tenant's own) for that transaction only, with the statement
    /// timeout. Nothing is sent yet: `BEGIN` and the scope go with the first statement.
    fn begin(
        &self,
        guard: &mut PooledConnection,
        scope: Option<&SessionScope>,
        timeout: Duration,
    ) -> Result<(), PoolError> {
        let conn: &mut AsyncPgConnection = guard;
        // Tell diesel, so that a handler's own transaction becomes a savepoint.
        AnsiTransactionManager::transaction_manager_status_mut(conn)
            .transaction_state()
            .and_then(|state| state.change_transaction_depth(TransactionDepthChange::IncreaseDepth))
            .map_err(|error| {
                drop(guard.conn.take());
                PoolError::Scope(error)
            })?;
        *guard.opening.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(Opening {
            search_path: scope
                .map_or("public", |s| s.search_path.as_str())
                .to_owned(),
            tenant: scope.map_or(guard.tenant, |s| s.tenant),
            timeout: timeout.as_millis().to_string(),
        });
        guard.in_transaction = true;
        guard.failure = Some(Failure::default());
        self.counters.rescoped.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes back a connection that is free again, unless it is broken, too old, or the
    /// process is panicking (then it is closed).
    fn keep(&self, mut idle: Idle) {
        let reusable = !std::thread::panicking()
            && !idle.conn.is_broken()
            && idle.opened.elapsed() < self.settings.max_lifetime;
        if reusable {
            idle.since = Instant::now();
            let mut state = self.lock();
            state.idle.push_back(idle);
            self.dispatch(&mut state);
        }
    }

    fn limit(&self, error: &ConnectError) {
        let open = self.settings.max_connections - self.sockets.available_permits() as u32;
        let reason = format!(
            "PostgreSQL refused more connections (SQLSTATE 53300) at {open} open connections of this pool"
        );
        let mut state = self.lock();
        let first = state
            .limited
            .as_ref()
            .is_none_or(|limit| limit.until <= Instant::now());
        state.limited = Some(Limit {
            open,
            until: Instant::now() + self.settings.backoff,
            reason,
        });
        drop(state);
        if first {
            tracing::warn!(pool = self.name, sqlstate = "53300", open_connections = open, error = %error,
                "PostgreSQL has no connection slot left: holding the connections already open");
        }
    }
}

impl State {
    /// Gives back one of `tenant`'s connections.
    fn release(&mut self, tenant: Uuid) {
        if let Some(count) = self.in_use.get_mut(&tenant) {
            *count -= 1;
            if *count == 0 {
                self.in_use.remove(&tenant);
            }
        }
    }
}

/// Closes connections idle for longer than the idle timeout, or older than their
/// lifetime, until the pool is dropped.
async fn close_idle_connections(pool: Weak<Shared>) {
    loop {
        let every = match pool.upgrade() {
            Some(shared) => (shared.settings.idle_timeout / 2)
                .clamp(Duration::from_millis(250), Duration::from_secs(30)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(shared) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let closed: VecDeque<Idle> = {
            let mut state = shared.lock();
            let (keep, close) = state.idle.drain(..).partition(|idle| {
                now.duration_since(idle.since) < shared.settings.idle_timeout
                    && now.duration_since(idle.opened) < shared.settings.max_lifetime
            });
            state.idle = keep;
            close
        };
        drop(closed);
    }
}
