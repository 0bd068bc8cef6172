//! Opening one PostgreSQL connection, on the database runtime.
//!
//! A connection of a pool holds a permit of that pool's connection cap for as long as
//! PostgreSQL may count it: the permit is released only after the server has closed its
//! end of the socket (a backend leaves `pg_stat_activity` and frees its slot of
//! `max_connections` before its socket closes). Closing a connection to make room for
//! another therefore never makes PostgreSQL see one connection more than the cap.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_util::either::Either;

use crate::db::tls::{PgConfig, TlsStream};

/// How long a closing connection waits for the server to close its end before the
/// permit is released anyway (a server that does not answer).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why a connection could not be opened. Messages name the server (`host:port`), never
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not reach PostgreSQL at {server}: {source}")]
    Unreachable { server: String, source: io::Error },
    #[error(
        "PostgreSQL at {server} refused the connection: {}",
        with_causes(source)
    )]
    Refused {
        server: String,
        source: tokio_postgres::Error,
    },
    #[error("could not set up the connection to {server}: {source}")]
    Setup {
        server: String,
        source: diesel::ConnectionError,
    },
    #[error("the database runtime stopped")]
    RuntimeGone,
    /// A statement of the check for a transaction pooler failed (see `pooler`).
    #[error("could not check for a connection pooler: {0}")]
    Probe(String),
}

impl ConnectError {
    /// The SQLSTATE PostgreSQL answered with, if it answered.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            ConnectError::Refused { source, .. } => source.code(),
            _ => None,
        }
    }

    /// PostgreSQL has no connection slot left (`max_connections` or a role's limit).
    pub fn is_too_many_connections(&self) -> bool {
        self.sqlstate() == Some(&SqlState::TOO_MANY_CONNECTIONS)
    }
}

/// `error` and what caused it (tokio-postgres keeps the server's message or the TLS
/// failure in the cause: "db error: ...", "error performing TLS handshake: ...").
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

/// An open connection, and whether its socket has closed since.
pub struct PgConn {
    conn: AsyncPgConnection,
    closed: Arc<AtomicBool>,
}

impl PgConn {
    /// The diesel connection and its closed flag, apart: migrations own the connection
    /// in a blocking task, then put it back together with [`PgConn::from_parts`].
    pub fn into_parts(self) -> (AsyncPgConnection, Arc<AtomicBool>) {
        (self.conn, self.closed)
    }

    pub fn from_parts(conn: AsyncPgConnection, closed: Arc<AtomicBool>) -> Self {
        Self { conn, closed }
    }

    /// The server closed it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closed by the server, or left with an open or failed transaction: never reuse it.
    pub fn is_broken(&mut self) -> bool {
        self.closed.load(Ordering::Acquire)
            || AnsiTransactionManager::is_broken_transaction_manager(&mut self.conn)
    }
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

/// `host:port` of the first server of `config`, for messages (never credentials).
pub fn server_of(config: &tokio_postgres::Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match (config.get_hostaddrs().first(), config.get_hosts().first()) {
        (Some(ip), _) => format!("{ip}:{port}"),
        (None, Some(Host::Tcp(host))) => format!("{host}:{port}"),
        (None, Some(Host::Unix(dir))) => format!("{}/.s.PGSQL.{port}", dir.display()),
        (None, None) => format!("(no host):{port}"),
    }
}

/// Opens a connection with `config` on the database runtime. `permit` (a pool's cap) is
/// held until the server has closed the connection; `on_close` runs then.
pub async fn connect(
    config: PgConfig,
    runtime: &Handle,
    permit: Option<OwnedSemaphorePermit>,
    on_close: Option<Box<dyn FnOnce() + Send>>,
) -> Result<PgConn, ConnectError> {
    runtime
        .spawn(async move {
            let (client, connection, server) = log_in(&config).await?;
            let closed = Arc::new(AtomicBool::new(false));
            let flag = closed.clone();
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %error, "database connection ended");
                }
                flag.store(true, Ordering::Release);
                drop(permit);
                if let Some(on_close) = on_close {
                    on_close();
                }
            });
            let conn = set_up(client, &config)
                .await
                .map_err(|source| ConnectError::Setup { server, source })?;
            Ok(PgConn { conn, closed })
        })
        .await
        .map_err(|_| ConnectError::RuntimeGone)?
}

/// diesel's connection around `client`. diesel sets the session's time zone and encoding
/// with statements it prepares: through a pooler in transaction mode that happens inside
/// one transaction, so each statement runs on the server session it was prepared on, and
/// a statement kept past it could meet another client's of the same name there.
async fn set_up(
    client: tokio_postgres::Client,
    config: &PgConfig,
) -> Result<AsyncPgConnection, diesel::ConnectionError> {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};

    if config.takes_start_up_options() {
        return AsyncPgConnection::try_from(client).await;
    }
    let failed = |e: tokio_postgres::Error| {
        diesel::ConnectionError::CouldntSetupConfiguration(
            diesel::result::Error::QueryBuilderError(e.to_string().into()),
        )
    };
    client.batch_execute("BEGIN").await.map_err(failed)?;
    let mut conn = AsyncPgConnection::try_from(client).await?;
    if !config.keeps_prepared_statements() {
        // Each statement is prepared, run and closed inside its transaction.
        conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
    }
    conn.batch_execute("COMMIT")
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// A bare client outside every pool (the pooler check, `pooler`): the caller sends
/// statements that each travel in one message flight (`query_typed`), so a pooler in
/// transaction mode cannot split one between two server sessions.
pub async fn bare(
    config: PgConfig,
    runtime: &Handle,
) -> Result<tokio_postgres::Client, ConnectError> {
    runtime
        .spawn(async move {
            let (client, connection, _) = log_in(&config).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %error, "database connection ended");
                }
            });
            Ok(client)
        })
        .await
        .map_err(|_| ConnectError::RuntimeGone)?
}

/// A connection that receives PostgreSQL's notifications on one channel (`LISTEN`).
pub struct Listener {
    client: tokio_postgres::Client,
    server: String,
    /// `LISTEN "<channel>"`, sent again as the liveness check (so `pg_stat_activity`
    /// shows what the connection is for).
    listen: String,
    /// The payloads, in order; `None` once the connection has ended.
    pub notifications: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Listener {
    /// Checks that the connection still answers (a silent network loses notifications
    /// without closing anything).
    pub async fn ping(&self, limit: Duration) -> Result<(), String> {
        match tokio::time::timeout(limit, self.client.batch_execute(&self.listen)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("{} did not answer within {limit:?}", self.server)),
        }
    }
}

/// Opens a connection with `config` on the database runtime and listens on `channel`
/// (a constant identifier).
pub async fn listen(
    config: PgConfig,
    runtime: &Handle,
    channel: &'static str,
) -> Result<Listener, ConnectError> {
    runtime
        .spawn(async move {
            let (client, mut connection, server) = log_in(&config).await?;
            let (sender, notifications) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                use tokio_postgres::AsyncMessage;
                // Ends when the server closes the connection or the client is dropped.
                while let Some(message) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    match message {
                        Ok(AsyncMessage::Notification(note)) => {
                            if sender.send(note.payload().to_owned()).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::debug!(error = %error, "listening connection ended");
                            break;
                        }
                    }
                }
            });
            let listen = format!("LISTEN \"{channel}\"");
            client
                .batch_execute(&listen)
                .await
                .map_err(|source| ConnectError::Refused {
                    server: server.clone(),
                    source,
                })?;
            Ok(Listener {
                client,
                server,
                listen,
                notifications,
            })
        })
        .await
        .map_err(|_| ConnectError::RuntimeGone)?
}

type Socket = Either<TcpStream, UnixStream>;

/// An open, logged-in connection: the client, the task that drives it, and the server's
/// `host:port` for messages.
type LoggedIn = (
    tokio_postgres::Client,
    tokio_postgres::Connection<ClosesWithServer<Socket>, TlsStream<ClosesWithServer<Socket>>>,
    String,
);

/// Opens a socket to the server of `config` and logs in (over TLS as its `sslmode` says).
async fn log_in(config: &PgConfig) -> Result<LoggedIn, ConnectError> {
    let server = server_of(config);
    let unreachable = |source| ConnectError::Unreachable {
        server: server.clone(),
        source,
    };
    let (socket, host) = open_socket(config).await.map_err(unreachable)?;
    let tls = config.tls().connector(&host).map_err(unreachable)?;
    let (client, connection) =
        config
            .connect_raw(socket, tls)
            .await
            .map_err(|source| ConnectError::Refused {
                server: server.clone(),
                source,
            })?;
    Ok((client, connection, server))
}

/// Connects to the first reachable host of `config` (as libpq does with a host list).
/// Returns the socket and the host's name (what its certificate must name).
async fn open_socket(
    config: &tokio_postgres::Config,
) -> io::Result<(ClosesWithServer<Socket>, String)> {
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    let count = hosts.len().max(addrs.len());
    let mut last_error = io::Error::new(
        io::ErrorKind::InvalidInput,
        "the database URL names no host",
    );
    for i in 0..count {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        // The name the server is known by: its host name, else its address; a Unix
        // socket never speaks TLS.
        let name = match (hosts.get(i), addrs.get(i)) {
            (Some(Host::Tcp(host)), _) => host.clone(),
            (_, Some(ip)) => ip.to_string(),
            _ => "localhost".to_owned(),
        };
        let attempt = async {
            match (addrs.get(i), hosts.get(i)) {
                (Some(ip), _) => tcp(TcpStream::connect((*ip, port)).await?),
                (None, Some(Host::Tcp(host))) => {
                    tcp(TcpStream::connect((host.as_str(), port)).await?)
                }
                (None, Some(Host::Unix(dir))) => Ok(Either::Right(
                    UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?,
                )),
                (None, None) => Err(io::Error::new(io::ErrorKind::InvalidInput, "no host")),
            }
        };
        let result = match config.get_connect_timeout() {
            Some(limit) => tokio::time::timeout(*limit, attempt)
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))),
            None => attempt.await,
        };
        match result {
            Ok(socket) => return Ok((ClosesWithServer::new(socket), name)),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

fn tcp(stream: TcpStream) -> io::Result<Socket> {
    stream.set_nodelay(true)?;
    Ok(Either::Left(stream))
}

/// A socket whose shutdown completes only when the peer has closed its end too (or
/// after [`CLOSE_WAIT`]). tokio-postgres shuts the socket down after its `Terminate`
/// message, so the connection's task (and the cap permit it holds) ends only once
/// PostgreSQL's backend has exited: a backend leaves its socket open until the process
/// dies, after it left `pg_stat_activity` and released its connection slot, precisely so
/// that clients can close synchronously (PostgreSQL's `pqcomm.c`, `socket_close`).
struct ClosesWithServer<S> {
    inner: S,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> ClosesWithServer<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            waiting: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClosesWithServer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClosesWithServer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.waiting.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.waiting = Some(Box::pin(tokio::time::sleep(CLOSE_WAIT)));
        }
        let mut scratch = [0u8; 256];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                // End of stream: the server closed its end.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match this.waiting.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
                        Some(Poll::Pending) => Poll::Pending,
                        _ => Poll::Ready(Ok(())),
                    };
                }
            }
        }
    }
}

/// `base` with PostgreSQL's `statement_timeout` (in milliseconds) in its start-up options.
pub fn with_statement_timeout(base: &PgConfig, timeout: Duration) -> PgConfig {
    with_option(
        base,
        format!("-c statement_timeout={}", timeout.as_millis()),
    )
}

/// `base` with `-c name="value"` added to its start-up options. `value` must be a safe
/// identifier (a `SchemaName` or a constant).
pub fn with_session_option(base: &PgConfig, name: &str, value: &str) -> PgConfig {
    with_option(base, format!("-c {name}=\"{value}\""))
}

/// Adds `option` to the start-up options, unless `base` leads to a pooler in transaction
/// mode (the pool sets the same per transaction there).
fn with_option(base: &PgConfig, option: String) -> PgConfig {
    let mut config = base.clone();
    if !base.takes_start_up_options() {
        return config;
    }
    let options = match base.get_options() {
        Some(existing) if !existing.trim().is_empty() => format!("{existing} {option}"),
        _ => option,
    };
    config.options(&options);
    config
}
