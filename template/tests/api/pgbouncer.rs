//! A throwaway PgBouncer in front of a PostgreSQL server, for the tests of the
//! transaction-pooler mode: a new process on a free local port, stopped when dropped.
//! `pgbouncer` is found on the `PATH`, in `/usr/sbin`, or at `TENANCY_TEST_PGBOUNCER`.
//!
//! Clients log in with their role's password, which PgBouncer checks against the server's
//! `pg_shadow` (as the server's `postgres` user, without a password): roles created by a
//! test need no entry of their own.

use std::path::PathBuf;
use std::process::Command;

pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
}

fn find_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TENANCY_TEST_PGBOUNCER") {
        return Some(PathBuf::from(path));
    }
    [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl PgBouncer {
    /// PgBouncer in `mode` (`transaction` or `session`) with `pool_size` server connections
    /// per database and role, in front of the server of `server_url`; `None` (with a
    /// message) where PgBouncer is not installed, which fails the test under CI.
    pub fn start(server_url: &str, mode: &str, pool_size: u32) -> Option<Self> {
        let Some(binary) = find_binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "pgbouncer not found: install it (apt-get install pgbouncer) or set TENANCY_TEST_PGBOUNCER"
            );
            eprintln!("skipped: pgbouncer not found (apt-get install pgbouncer)");
            return None;
        };
        let server: tokio_postgres::Config = server_url.parse().unwrap();
        let host = match server.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let server_port = server.get_ports().first().copied().unwrap_or(5432);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "tenancy-test-pgbouncer-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // PgBouncer refuses to run as root: it then runs as `postgres`.
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let pooler = Self { dir, port };
        std::fs::write(pooler.dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        // server_login_retry: after a failed log-in to the server, PgBouncer waits this long
        // (15 s by default) before the next; a poll that lands while PostgreSQL restarts
        // would hold every request after the restart that long.
        std::fs::write(
            pooler.dir.join("settings"),
            format!(
                "[databases]\n* = host={host} port={server_port}\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {dir}/users.txt\nauth_user = postgres\n\
                 auth_query = SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 1000\nserver_login_retry = 1\n\
                 ignore_startup_parameters = extra_float_digits,options,statement_timeout,search_path\n\
                 logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
                dir = pooler.dir.display()
            ),
        )
        .unwrap();
        pooler.write_mode(mode);
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&pooler.dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let mut command = if as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        let output = command
            .arg("-d")
            .arg(pooler.dir.join("pgbouncer.ini"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pgbouncer did not start: {}{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(pooler.dir.join("pgbouncer.log")).unwrap_or_default()
        );
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(pooler);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("pgbouncer did not listen on port {port}");
    }

    fn write_mode(&self, mode: &str) {
        let settings = std::fs::read_to_string(self.dir.join("settings")).unwrap();
        let file = self.dir.join("pgbouncer.ini");
        std::fs::write(&file, format!("{settings}pool_mode = {mode}\n")).unwrap();
    }

{%- if isolation != "database" %}

    /// Switches to `mode` for the transactions that start from now on (clients that hold
    /// a server connection in session mode keep it), handing out server connections in
    /// turn (`server_round_robin`). By default PgBouncer reuses the most recently freed
    /// one first: without concurrency at the pooler every transaction lands on the same
    /// server session, and a switch shows only when requests happen to overlap there.
    pub fn set_mode(&self, mode: &str) {
        self.write_mode(mode);
        self.reload_with("server_round_robin = 1");
    }
{%- endif %}

    /// Adds `setting` (a line of pgbouncer.ini) and reloads it.
    pub fn reload_with(&self, setting: &str) {
        let file = self.dir.join("pgbouncer.ini");
        let settings = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, format!("{settings}{setting}\n")).unwrap();
        self.signal("HUP");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    /// `url` (one of the test server's) with PgBouncer's address instead of the server's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (credentials, after) = match rest.rsplit_once('@') {
            Some((credentials, after)) => (format!("{credentials}@"), after),
            None => (String::new(), rest),
        };
        let tail = after.find(['/', '?']).map(|i| &after[i..]).unwrap_or("");
        format!("{scheme}://{credentials}127.0.0.1:{}{tail}", self.port)
    }

    /// `127.0.0.1:<port>`: where it listens.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The databases clients logged in to through it, from its log.
    pub fn databases_logged_in(&self) -> std::collections::HashSet<String> {
        let log = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| line.split("login attempt: db=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    fn signal(&self, signal: &str) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.trim())
                .status();
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.signal("TERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
