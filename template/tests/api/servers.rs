//! A second PostgreSQL server for placement and moves (`TENANCY_TEST_OTHER_SERVER`).

use crate::helpers::{query_url, server_url};
use crate::pgbouncer::PgBouncer;

/// `host:port` of `url`.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_string()
}

/// The second PostgreSQL server of the placement test (`TENANCY_TEST_OTHER_SERVER`,
/// host:port; ci/ starts one), reached as the test server's user; the test's app role is
/// created there (roles belong to a server), and everything is dropped at the end.
pub(crate) struct OtherServer {
    pub(crate) address: String,
    /// `postgres://user@host:port`, the test server's user on this server.
    pub(crate) base_url: String,
    /// Its maintenance database, as the test server's user.
    pub(crate) admin_url: String,
    /// Whether it really is another server (without `TENANCY_TEST_OTHER_SERVER` the test
    /// runs against the main server under its own address, and proves less).
    pub(crate) distinct: bool,
    role: String,
    prefix: String,
}

impl OtherServer {
    pub(crate) async fn start(db: &crate::helpers::TestDatabase) -> Self {
        let main = host_of(&server_url());
        let address = std::env::var("TENANCY_TEST_OTHER_SERVER").unwrap_or_else(|_| {
            eprintln!("TENANCY_TEST_OTHER_SERVER is not set: placing on {main}, the main server");
            main.clone()
        });
        let url = server_url();
        let base_url = format!(
            "postgres://{}{address}",
            url.split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .map_or(String::new(), |(user, _)| format!("{user}@"))
        );
        let admin_url = format!("{base_url}/postgres");
        let distinct = address != main;
        if distinct {
            query_url(
                &admin_url,
                &format!(
                    "CREATE ROLE \"{}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{}'",
                    db.app_role, db.app_password
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot prepare the second server {address}: {e}"));
        }
        Self {
            address,
            base_url,
            admin_url,
            distinct,
            role: db.app_role.clone(),
            prefix: db.tenant_database_prefix.clone(),
        }
    }

    pub(crate) async fn has_database(&self, name: &str) -> bool {
        let sql = format!("SELECT 1 FROM pg_database WHERE datname = '{name}'");
        !query_url(&self.admin_url, &sql).await.unwrap().is_empty()
    }
}

impl Drop for OtherServer {
    fn drop(&mut self) {
        if self.distinct {
            crate::helpers::clean_up(
                self.admin_url.clone(),
                self.prefix.clone(),
                None,
                self.role.clone(),
            );
        }
    }
}

/// An app whose `TENANCY_DATABASE_SERVERS` lists the second server and two unreachable
/// ones (to ask for a server other than the recorded one).
pub(crate) async fn spawn_with_other_server() -> (crate::helpers::TestApp, OtherServer) {
    let db = crate::helpers::TestDatabase::create().await;
    let other = OtherServer::start(&db).await;
    let servers = format!("{},elsewhere.invalid:5432,elsewhere.invalid", other.address);
    // Unreachable servers listed: every tenant that names none stays on the default one.
    let app = crate::helpers::spawn_app_on(
        db,
        &[
            ("TENANCY_DATABASE_SERVERS", &servers),
            ("TENANCY_DATABASE_PLACEMENT", "default"),
{%- if isolation == "hybrid" %}
            // A tenant created without a tier gets a database of its own.
            ("TENANCY_DEFAULT_ISOLATION", "database"),
{%- endif %}
        ],
    )
    .await;
    (app, other)
}

/// As [`spawn_with_other_server`] (the second server alone listed), in transaction mode
/// behind a PgBouncer in front of each server: the application role reaches the default
/// server through the first (`TENANCY_DATABASE_URL`), the second through the other
/// (`TENANCY_DATABASE_SERVER_POOLERS`); each answers a client it cannot give a server
/// connection within 3 s with an error. `None` where PgBouncer is not installed.
pub(crate) async fn spawn_behind_poolers()
-> Option<(crate::helpers::TestApp, OtherServer, [PgBouncer; 2])> {
    let connections = crate::pooler::SERVER_CONNECTIONS;
    let near = PgBouncer::start(&server_url(), "transaction", connections)?;
    let db = crate::helpers::TestDatabase::create().await;
    let other = OtherServer::start(&db).await;
    let far = PgBouncer::start(&other.base_url, "transaction", connections)?;
    // A client waiting for a server connection that cannot be had (to a database a move
    // closed) gets an error after 3 s instead of 120.
    for pooler in [&near, &far] {
        pooler.reload_with("query_wait_timeout = 3");
    }
    let poolers = format!("{}={}", other.address, far.address());
    let app = crate::pooler::spawn_behind(
        &near,
        db,
        &[
            ("TENANCY_DATABASE_SERVERS", &other.address),
            ("TENANCY_DATABASE_SERVER_POOLERS", &poolers),
            ("TENANCY_DATABASE_PLACEMENT", "default"),
{%- if isolation == "hybrid" %}
            ("TENANCY_DEFAULT_ISOLATION", "database"),
{%- endif %}
        ],
    )
    .await;
    Some((app, other, [near, far]))
}
