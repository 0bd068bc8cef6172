//! TLS to PostgreSQL: a throwaway server that takes TCP connections over TLS only, with a
//! certificate signed by a CA this test makes (`openssl`); `sslmode` and `sslrootcert`
//! (or `TENANCY_DATABASE_CA_FILE`) decide what is checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use actix_web::http::StatusCode;
use serde_json::json;

use crate::cluster::Cluster;
use crate::helpers::{TestDatabase, query_url, spawn_app_on};
use svc::db::connect::connect;
use svc::db::runtime;
use svc::db::tls::PgConfig;

/// The name the test server's certificate is for (`hostaddr` points it at 127.0.0.1).
const SERVER_NAME: &str = "db.tenancy.test";

/// A new empty folder under the system's temporary folder, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority made for one test, in a folder of its own.
pub struct TestCa {
    pub dir: TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        openssl(
            &dir,
            &format!(
                "req -x509 -newkey rsa:2048 -nodes -days 1 -keyout ca.key -out ca.crt -subj /CN={name}"
            ),
        );
        Self { dir }
    }

    /// The CA's certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A certificate for `names` (e.g. `DNS:db.test,IP:127.0.0.1`) signed by this CA:
    /// `<stem>.crt` and `<stem>.key` in its folder.
    pub fn issue(&self, stem: &str, names: &str) -> (PathBuf, PathBuf) {
        self.issue_signed(stem, names, "sha256")
    }

    /// The same, the CA's signature made with `digest` (`sha256`, `sha384`, ...).
    pub fn issue_signed(&self, stem: &str, names: &str, digest: &str) -> (PathBuf, PathBuf) {
        openssl(
            &self.dir,
            &format!(
                "req -newkey rsa:2048 -nodes -keyout {stem}.key -out {stem}.csr -subj /CN={stem}"
            ),
        );
        std::fs::write(self.dir.join("ext"), format!("subjectAltName={names}\n")).unwrap();
        openssl(
            &self.dir,
            &format!(
                "x509 -req -{digest} -in {stem}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {stem}.crt -days 1 -extfile ext"
            ),
        );
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }
}

/// Runs `openssl` with `args` (separated by spaces) in `dir`.
fn openssl(dir: &Path, args: &str) {
    let done = Command::new("openssl")
        .args(args.split(' '))
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl not found: install it");
    assert!(done.success(), "openssl {args}");
}

/// A server taking TLS only, with a certificate for [`SERVER_NAME`] signed by `ca`.
fn tls_server(ca: &TestCa) -> Option<Cluster> {
    let (cert, key) = ca.issue("server", &format!("DNS:{SERVER_NAME}"));
    Cluster::start_tls(&cert, &key)
}

/// The URL of `user` on database `database` of `cluster` over TCP, by `host` (resolved to
/// 127.0.0.1), with `options` (`sslmode=...`).
fn tcp_url(cluster: &Cluster, user: &str, database: &str, host: &str, options: &str) -> String {
    format!(
        "postgres://{user}@{host}:{}/{database}?hostaddr=127.0.0.1&connect_timeout=5&{options}",
        cluster.port()
    )
}

/// Connects with `url` as the service does; the error's text if it cannot.
async fn try_connect(url: &str) -> Result<(), String> {
    let config = PgConfig::parse(url, None)?;
    connect(config, &runtime::handle().unwrap(), None, None)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[actix_web::test]
async fn verify_full_serves_the_whole_service_over_tls_with_the_right_ca() {
    let ca = TestCa::new("tenancy-test-ca");
    let Some(cluster) = tls_server(&ca) else {
        return;
    };
    let db = TestDatabase::create_on(cluster.socket_url()).await;
    let options = format!("sslmode=verify-full&sslrootcert={}", ca.cert().display());
    let app_user = format!("{}:{}", db.app_role, db.app_password);
    let app_url = tcp_url(&cluster, &app_user, &db.name, SERVER_NAME, &options);
    let owner_url = tcp_url(&cluster, "postgres", &db.name, SERVER_NAME, &options);
    let app = spawn_app_on(
        db,
        &[
            ("TENANCY_DATABASE_URL", &app_url),
            ("TENANCY_MIGRATION_DATABASE_URL", &owner_url),
        ],
    )
    .await;
    // Migrations (the owner's URL) and provisioning ran: TCP takes TLS only.
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, body) =
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "sealed"}));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["title"], "sealed");

    let sessions = query_url(
        &cluster.socket_url(),
        &format!(
            "SELECT s.ssl::text, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = '{}'",
            app.db.app_role
        ),
    )
    .await
    .unwrap();
    assert!(!sessions.is_empty(), "the service holds no connection");
    for session in &sessions {
        assert_eq!(session[0].as_deref(), Some("true"), "{sessions:?}");
    }
}

#[actix_web::test]
async fn verify_full_refuses_another_ca_or_another_host_name_and_verify_ca_checks_the_ca_only() {
    let ca = TestCa::new("tenancy-test-ca");
    let Some(cluster) = tls_server(&ca) else {
        return;
    };
    let other = TestCa::new("another-ca");
    let with =
        |host: &str, options: String| tcp_url(&cluster, "postgres", "postgres", host, &options);
    let root = |ca: &TestCa| format!("sslrootcert={}", ca.cert().display());

    try_connect(&with(
        SERVER_NAME,
        format!("sslmode=verify-full&{}", root(&ca)),
    ))
    .await
    .unwrap();

    let wrong_ca = try_connect(&with(
        SERVER_NAME,
        format!("sslmode=verify-full&{}", root(&other)),
    ))
    .await
    .unwrap_err();
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");

    // 127.0.0.1 is not a name of the certificate.
    let wrong_name = try_connect(&with(
        "127.0.0.1",
        format!("sslmode=verify-full&{}", root(&ca)),
    ))
    .await
    .unwrap_err();
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");

    // verify-ca checks the CA, not the name; require (no CA given) checks nothing but
    // still encrypts; given a CA, require checks it (as libpq does).
    try_connect(&with(
        "127.0.0.1",
        format!("sslmode=verify-ca&{}", root(&ca)),
    ))
    .await
    .unwrap();
    let wrong_ca = try_connect(&with(
        "127.0.0.1",
        format!("sslmode=verify-ca&{}", root(&other)),
    ))
    .await
    .unwrap_err();
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");
    try_connect(&with("127.0.0.1", "sslmode=require".into()))
        .await
        .unwrap();
    let wrong_ca = try_connect(&with(
        "127.0.0.1",
        format!("sslmode=require&{}", root(&other)),
    ))
    .await
    .unwrap_err();
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");

    // TENANCY_DATABASE_CA_FILE stands in for sslrootcert.
    let url = with(SERVER_NAME, "sslmode=verify-full".into());
    let config = PgConfig::parse(&url, Some(&ca.cert())).unwrap();
    connect(config, &runtime::handle().unwrap(), None, None)
        .await
        .unwrap();
    // The web PKI roots do not know the test's CA.
    let refused = try_connect(&url).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // disable sends no TLS, which this server refuses (hostssl only).
    let plain = try_connect(&with(SERVER_NAME, "sslmode=disable".into()))
        .await
        .unwrap_err();
    assert!(plain.contains("no pg_hba.conf entry"), "{plain}");
}

#[actix_web::test]
async fn require_refuses_a_server_without_tls_and_prefer_falls_back_to_plain() {
    let Some(cluster) = Cluster::start(&["ssl=off"]) else {
        return;
    };
    let with = |options: &str| tcp_url(&cluster, "postgres", "postgres", "127.0.0.1", options);
    for mode in ["require", "verify-ca", "verify-full"] {
        let refused = try_connect(&with(&format!("sslmode={mode}")))
            .await
            .unwrap_err();
        assert!(
            refused.contains("server does not support TLS"),
            "{mode}: {refused}"
        );
    }
    try_connect(&with("sslmode=prefer")).await.unwrap();
    try_connect(&with("sslmode=disable")).await.unwrap();
}

#[actix_web::test]
async fn scram_binds_itself_to_the_tls_connection_whatever_hash_signed_the_certificate() {
    for digest in ["sha256", "sha384", "sha512"] {
        let ca = TestCa::new("binding-ca");
        let (cert, key) = ca.issue_signed("server", &format!("DNS:{SERVER_NAME}"), digest);
        let Some(cluster) = Cluster::start_tls(&cert, &key) else {
            return;
        };
        query_url(
            &cluster.socket_url(),
            "CREATE ROLE binder LOGIN PASSWORD 'b1nd-s3cret'",
        )
        .await
        .unwrap();
        let root = format!("sslrootcert={}", ca.cert().display());
        // `require` fails unless the server accepted this side's hash of its certificate
        // (SCRAM-SHA-256-PLUS), with or without the certificate checked.
        for mode in ["require", "verify-full"] {
            let options = format!("sslmode={mode}&{root}&channel_binding=require");
            let url = tcp_url(
                &cluster,
                "binder:b1nd-s3cret",
                "postgres",
                SERVER_NAME,
                &options,
            );
            try_connect(&url)
                .await
                .unwrap_or_else(|e| panic!("{digest}, sslmode={mode}: {e}"));
        }
        let options = format!("sslmode=verify-full&{root}&channel_binding=require");
        let wrong = tcp_url(&cluster, "binder:wrong", "postgres", SERVER_NAME, &options);
        let refused = try_connect(&wrong).await.unwrap_err();
        assert!(
            refused.contains("password authentication failed"),
            "{refused}"
        );
        // `postgres` gets in without a password here: nothing was bound, so `require`
        // refuses the server.
        let unbound = tcp_url(&cluster, "postgres", "postgres", SERVER_NAME, &options);
        let refused = try_connect(&unbound).await.unwrap_err();
        assert!(refused.contains("channel binding"), "{refused}");
    }
}
