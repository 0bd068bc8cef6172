//! Test set-up: every test gets its own freshly created database on the server named by
//! `TENANCY_TEST_DATABASE_URL` (default: the local PostgreSQL), dropped when the test ends.
//! No test doubles: the real server, real schemas, real connections.

use std::collections::HashMap;

use actix_web::web;
use futures_util::StreamExt;

use svc::config::Settings;
use svc::domain::{Tenant, TenantIdentifier};
pub use svc::startup::app;
use svc::tenancy::Tenancy;
use svc::tenancy::lifecycle::NewTenant;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
{%- if admin_api %}
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";
{%- endif %}
{%- if subdomain_resolver %}
/// Tenants live under this domain in the tests.
pub const DOMAIN_SUFFIX: &str = ".example.test";
{%- endif %}

/// The service's binary, as `cargo test` built it.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_{{project-name}}")
}

pub fn server_url() -> String {
    std::env::var("TENANCY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.into())
}
{%- if redis_cache %}

/// The Redis of the tests (`TENANCY_TEST_REDIS_URL`, default the local one). Tests share
/// it: keys carry each test database's name.
pub fn redis_url() -> String {
    std::env::var("TENANCY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}
{%- endif %}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..host_end])
}

/// `url` with its user and password replaced.
fn with_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let host = rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Runs `sql` on the server's maintenance database.
pub async fn server_exec(sql: &str) {
    server_exec_on(&server_url(), sql).await
}

/// Runs `sql` on the maintenance database of the server at `server`.
pub async fn server_exec_on(server: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at TENANCY_TEST_DATABASE_URL ({e})"));
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// Runs `sql` on the database at `url` and returns the rows as text.
pub async fn query_url(
    url: &str,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let rows = client.simple_query(sql).await;
    drop(client);
    let _ = driver.await;
    Ok(rows?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// A database that exists for one test, and an application role of its own: no
/// superuser, no ownership, only what the migrations grant it.
pub struct TestDatabase {
    /// The server's URL (its maintenance database).
    pub server: String,
    pub name: String,
    /// The owner's URL (`TENANCY_TEST_DATABASE_URL`'s user): migrations, checks.
    pub url: String,
    /// The application role's URL: what the service connects with.
    pub app_url: String,
    pub app_role: String,
    pub app_password: String,
    /// Names this test's tenant databases (database per tenant): 7 bytes, unique.
    pub tenant_database_prefix: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        Self::create_on(server_url()).await
    }

    /// The same on the server at `server` (a superuser's URL).
    pub async fn create_on(server: String) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("tenancy_test_{id}");
        let app_role = format!("tenancy_test_app_{}", &id[..16]);
        let app_password = uuid::Uuid::new_v4().simple().to_string();
        server_exec_on(&server, &format!("CREATE DATABASE \"{name}\"")).await;
        server_exec_on(
            &server,
            &format!(
                "CREATE ROLE \"{app_role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS \
             PASSWORD '{app_password}'"
            ),
        )
        .await;
        let url = with_database(&server, &name);
        let app_url = with_user(&url, &app_role, &app_password);
        Self {
            server,
            name,
            url,
            app_url,
            app_role,
            app_password,
            tenant_database_prefix: format!("t{}_", &id[16..21]),
        }
    }

    /// The `TENANCY_*` variables of a service on this database.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = base_env();
        env.extend([
            ("TENANCY_DATABASE_URL", self.app_url.clone()),
            ("TENANCY_MIGRATION_DATABASE_URL", self.url.clone()),
{%- if tenant_databases %}
            (
                "TENANCY_TENANT_DATABASE_PREFIX",
                self.tenant_database_prefix.clone(),
            ),
{%- endif %}
        ]);
        env
    }

    /// Runs `sql` in this database and returns the rows as text.
    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        query_url(&self.url, sql).await.unwrap()
    }

    /// Connections the service under test has open (to this database and to its tenant
    /// databases), as PostgreSQL counts them.
    pub async fn open_connections(&self) -> u32 {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}' \
             AND (datname = '{}' OR left(datname, {}) = '{}')",
            env!("CARGO_PKG_NAME"),
            self.name,
            self.tenant_database_prefix.len(),
            self.tenant_database_prefix
        );
        self.query(&sql).await[0][0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// How many notes `tenant` has, read as the owner; `None` when the tenant has no
    /// storage of its own (yet, or any more).
    pub async fn notes_of(&self, tenant: &Tenant) -> Option<i64> {
{%- if isolation == "schema" %}
        let schema = format!("tenant_{}", tenant.identifier);
        if !self.schemas().await.contains(&schema) {
            return None;
        }
        let rows = self
            .query(&format!("SELECT count(*) FROM \"{schema}\".notes"))
            .await;
{%- elsif isolation == "rls" %}
        let sql = format!(
            "SELECT set_config('app.tenant_id', '{id}', false); \
             SELECT count(*) FROM tenancy_data.notes WHERE tenant_id = '{id}'",
            id = tenant.id
        );
        let rows = self.query(&sql).await;
{%- elsif isolation == "hybrid" %}
        let sql = match tenant.isolation {
            svc::domain::Isolation::Schema => {
                let schema = format!("tenant_{}", tenant.identifier);
                if !self.schemas().await.contains(&schema) {
                    return None;
                }
                format!("SELECT count(*) FROM \"{schema}\".notes")
            }
            svc::domain::Isolation::Database => {
                let database = format!("{}{}", self.tenant_database_prefix, tenant.identifier);
                let url = with_database(&self.server, &database);
                let rows = query_url(&url, "SELECT count(*) FROM notes").await.ok()?;
                return rows.last()?.first()?.as_deref()?.parse().ok();
            }
            _ => format!(
                "SELECT set_config('app.tenant_id', '{id}', false); \
                 SELECT count(*) FROM tenancy_data.notes WHERE tenant_id = '{id}'",
                id = tenant.id
            ),
        };
        let rows = self.query(&sql).await;
{%- elsif isolation == "database" %}
        let database = format!("{}{}", self.tenant_database_prefix, tenant.identifier);
        let url = with_database(&self.server, &database);
        let rows = query_url(&url, "SELECT count(*) FROM notes").await.ok()?;
{%- endif %}
        rows.last()?.first()?.as_deref()?.parse().ok()
    }

    /// Holds a lock on the table of `tenant`'s notes that makes every write to it wait,
    /// until the returned connection is dropped.
    pub async fn lock_notes(&self, tenant: &Tenant) -> tokio_postgres::Client {
{%- if isolation == "schema" %}
        let url = self.url.clone();
        let table = format!("\"tenant_{}\".notes", tenant.identifier);
{%- elsif isolation == "rls" %}
        let _ = tenant;
        let url = self.url.clone();
        let table = "tenancy_data.notes".to_owned();
{%- elsif isolation == "hybrid" %}
        let (url, table) = match tenant.isolation {
            svc::domain::Isolation::Schema => (
                self.url.clone(),
                format!("\"tenant_{}\".notes", tenant.identifier),
            ),
            svc::domain::Isolation::Database => {
                let database = format!("{}{}", self.tenant_database_prefix, tenant.identifier);
                (with_database(&self.server, &database), "notes".to_owned())
            }
            _ => (self.url.clone(), "tenancy_data.notes".to_owned()),
        };
{%- elsif isolation == "database" %}
        let database = format!("{}{}", self.tenant_database_prefix, tenant.identifier);
        let url = with_database(&self.server, &database);
        let table = "notes".to_owned();
{%- endif %}
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN SHARE MODE"))
            .await
            .unwrap();
        client
    }

    /// The schemas in this database, without PostgreSQL's own.
    pub async fn schemas(&self) -> Vec<String> {
        self.query(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' \
             AND nspname <> 'information_schema' ORDER BY 1",
        )
        .await
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Tenant databases (database per tenant) first, then this one, then the role.
        clean_up(
            self.server.clone(),
            self.tenant_database_prefix.clone(),
            Some(self.name.clone()),
            self.app_role.clone(),
        );
    }
}

/// Drops, on the server at `url`, every database whose name starts with `prefix`, then
/// `database`, then `role`. Runs on a thread of its own: `Drop` may run inside an async
/// test.
pub fn clean_up(url: String, prefix: String, database: Option<String>, role: String) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let sql = format!(
                "SELECT datname FROM pg_database WHERE left(datname, {}) = '{prefix}'",
                prefix.len()
            );
            let mut names: Vec<String> = query_url(&url, &sql)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|row| row.into_iter().next().flatten())
                .collect();
            names.extend(database);
            // A few at a time: each DROP DATABASE waits for a checkpoint, and drops that
            // wait together share one.
            let url = &url;
            futures_util::stream::iter(names)
                .for_each_concurrent(4, |name| async move {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = query_url(url, &drop).await;
                })
                .await;
            let _ = query_url(url, &format!("DROP ROLE IF EXISTS \"{role}\"")).await;
        });
    })
    .join();
}

/// A `Tenancy` on a fresh, migrated database. Fields drop in order: pools first.
pub struct TestApp {
    pub tenancy: web::Data<Tenancy>,
    pub settings: Settings,
    pub db: TestDatabase,
    /// The schemas right after the control-plane migrations, before any tenant.
    pub baseline_schemas: Vec<String>,
}

/// Who the tests' lifecycle calls act as, in the audit trail.
pub fn operator() -> svc::tenancy::audit::Actor {
    svc::tenancy::audit::Actor::api("tests")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Like `spawn_app`, with extra `TENANCY_*` settings.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    spawn_app_on(TestDatabase::create().await, extra).await
}

/// The service's logs, on standard output with `TEST_LOG=1` (e.g.
/// `TEST_LOG=1 cargo test some_test | jq`), else nowhere. Installed once per test binary.
fn init_test_logs() {
    static LOGS: std::sync::Once = std::sync::Once::new();
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            svc::telemetry::init("info", std::io::stdout);
        } else {
            svc::telemetry::init("off", std::io::sink);
        }
    });
}

/// The settings of a service on `db`, with extra `TENANCY_*` settings, and the warnings
/// they give.
pub fn settings_on(db: &TestDatabase, extra: &[(&str, &str)]) -> (Settings, Vec<String>) {
    let mut env: HashMap<String, String> = db
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
{%- if admin_api %}
    env.insert("TENANCY_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string());
{%- endif %}
    for (key, value) in extra {
        // An empty value removes a default of the tests (e.g. the JWT secret).
        if value.is_empty() {
            env.remove(*key);
        } else {
            env.insert(key.to_string(), value.to_string());
        }
    }
    Settings::from_env_map(env).unwrap()
}

/// Like `spawn_app_with`, on `db`.
pub async fn spawn_app_on(db: TestDatabase, extra: &[(&str, &str)]) -> TestApp {
    init_test_logs();
    let (settings, warnings) = settings_on(&db, extra);
    assert!(warnings.is_empty(), "{warnings:?}");
    let tenancy = svc::startup::prepare(&settings).await.unwrap();
    let baseline_schemas = db.schemas().await;
    TestApp {
        tenancy,
        settings,
        db,
        baseline_schemas,
    }
}

impl TestApp {
    /// Checks that the service refuses the owner (the test server's user) as its
    /// application role, with a message naming `TENANCY_DATABASE_URL` and holding `why`,
    /// when that user is a superuser (as on CI); says so and checks nothing otherwise.
    pub async fn assert_the_owner_is_refused_as_app_role(&self, why: &str) {
        let superuser = self
            .db
            .query("SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user")
            .await;
        if superuser[0][0].as_deref() != Some("true") {
            eprintln!("the test server's user is no superuser: its refusal is not checked");
            return;
        }
        let mut env: HashMap<String, String> = base_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.insert("TENANCY_DATABASE_URL".to_string(), self.db.url.clone());
        let (settings, _) = Settings::from_env_map(env).unwrap();
        let tenancy = Tenancy::new(settings.tenancy).unwrap();
        let refusal = tenancy.check_app_role().await.unwrap_err().to_string();
        assert!(refusal.starts_with("TENANCY_DATABASE_URL: "), "{refusal}");
        assert!(refusal.contains(why), "{refusal}");
    }

    /// Enqueues an import of one note titled `title` for `tenant`; nothing runs it unless
    /// the test starts a worker.
    pub async fn enqueue_import(&self, tenant: &Tenant, title: &str) -> svc::jobs::JobRecord {
        let note = svc::routes::notes::NoteInput {
            title: title.to_owned(),
            body: String::new(),
        };
        let import = svc::routes::notes::ImportNotes {
            notes: vec![svc::routes::Object(note)],
        };
        let queue = svc::jobs::Queue::new(self.tenancy.clone());
        let (job, _) = queue
            .enqueue(tenant, &import, svc::jobs::Enqueue::default())
            .await
            .unwrap();
        job
    }

    pub async fn create_tenant(&self, identifier: &str) -> Tenant {
        self.tenancy
            .create_tenant(
                &crate::helpers::operator(),
                NewTenant::new(
                    TenantIdentifier::parse(identifier).unwrap(),
                    format!("Tenant {identifier}"),
                ),
            )
            .await
            .unwrap()
    }

    /// Creates these tenants, four at a time; returns them in the order given.
    pub async fn create_tenants(&self, identifiers: &[String]) -> Vec<Tenant> {
        futures_util::stream::iter(identifiers)
            .map(|identifier| self.create_tenant(identifier))
            .buffered(4)
            .collect()
            .await
    }
}

{%- assign first = resolvers | first %}
/// What the answer to a request without a tenant tells the client to send.
pub fn no_tenant_hint() -> &'static str {
{%- if first == "header" %}
    "X-Tenant-ID"
{%- elsif first == "subdomain" %}
    DOMAIN_SUFFIX
{%- elsif first == "path" %}
    "/t/<tenant>/"
{%- elsif first == "jwt" %}
    "bearer token"
{%- endif %}
}

/// The status of a request without a tenant: 401 when a token is the only way to name
/// one, else 400.
pub fn no_tenant_status() -> u16 {
{%- if resolution == "jwt" %}
    401
{%- else %}
    400
{%- endif %}
}
{%- if jwt_resolver %}

/// The HMAC secret of the test services' tokens.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

/// A token for `tenant`, valid for an hour, signed with `JWT_SECRET`.
pub fn token_for(tenant: &str) -> String {
    sign_hs256(serde_json::json!({
        "sub": "user-1",
        "tenant_id": tenant,
        "exp": now() + 3600,
    }))
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `claims` signed with `JWT_SECRET` (HS256).
pub fn sign_hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}
{%- endif %}

/// The settings the service needs in the tests besides its database: its resolvers'{% if redis_cache %} and
/// its Redis{% endif %}.
pub fn base_env() -> Vec<(&'static str, String)> {
    vec![
        // The database's settings come from `TestDatabase::env`.
{%- if redis_cache %}
        ("TENANCY_REDIS_URL", redis_url()),
{%- endif %}
{%- if subdomain_resolver %}
        ("TENANCY_DOMAIN_SUFFIX", DOMAIN_SUFFIX.to_string()),
{%- endif %}
{%- if jwt_resolver %}
        ("TENANCY_JWT_SECRET", JWT_SECRET.to_string()),
{%- endif %}
    ]
}

/// A request for `path` on behalf of `tenant`, addressed the way this service resolves
/// tenants (with a chain: the way of its first resolver).
pub fn for_tenant(
    request: actix_web::test::TestRequest,
    path: &str,
    tenant: &str,
) -> actix_web::test::TestRequest {
{%- if first == "header" %}
    request
        .uri(path)
        .insert_header(("X-Tenant-ID", tenant.to_owned()))
{%- elsif first == "subdomain" %}
    request
        .uri(path)
        .insert_header(("Host", format!("{tenant}{DOMAIN_SUFFIX}")))
{%- elsif first == "path" %}
    request.uri(&format!("/t/{tenant}{path}"))
{%- elsif first == "jwt" %}
    request
        .uri(path)
        .insert_header(("Authorization", format!("Bearer {}", token_for(tenant))))
{%- endif %}
}

/// The same as raw HTTP/1.1, for tests of the real server.
pub fn raw_request(path: &str, tenant: &str) -> String {
{%- if first == "header" %}
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Tenant-ID: {tenant}\r\nConnection: close\r\n\r\n"
    )
{%- elsif first == "subdomain" %}
    format!("GET {path} HTTP/1.1\r\nHost: {tenant}{DOMAIN_SUFFIX}\r\nConnection: close\r\n\r\n")
{%- elsif first == "path" %}
    format!("GET /t/{tenant}{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
{%- elsif first == "jwt" %}
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token_for(tenant)
    )
{%- endif %}
}

/// A problem body without its `request_id` (different for every request), to compare the
/// rest of two answers.
pub fn without_request_id(mut body: serde_json::Value) -> serde_json::Value {
    if let Some(members) = body.as_object_mut() {
        members.remove("request_id");
    }
    body
}

/// Makes `$app` an initialised test service of the generated application.
macro_rules! service {
    ($app:expr) => {
        actix_web::test::init_service($crate::helpers::app($app.tenancy.clone(), &$app.settings))
            .await
    };
}

/// A test app of `GET` routes (path => handler) behind the tenant middleware, as the real
/// service has it: for handlers that misbehave on purpose.
macro_rules! tenant_routes {
    ($app:expr, $($path:expr => $handler:expr),+ $(,)?) => {
        actix_web::test::init_service(
            actix_web::App::new()
                .app_data($app.tenancy.clone())
                .wrap(actix_web::middleware::from_fn(svc::tenancy::middleware::resolve_tenant))
{%- if path_resolver %}
                .app_data(actix_web::web::Data::new($app.settings.tenancy.resolve.path.clone()))
                .wrap(actix_web::middleware::from_fn(
                    svc::tenancy::resolve::path::strip_tenant_prefix,
                ))
{%- endif %}
                $(.route($path, actix_web::web::get().to($handler)))+,
        )
        .await
    };
}

/// `GET /health`: status and parsed body.{% raw %}
macro_rules! health {
    ($service:expr) => {{
        let request = actix_web::test::TestRequest::get()
            .uri("/health")
            .to_request();
        let response = actix_web::test::call_service(&$service, request).await;
        let status = response.status();
        let body: serde_json::Value = actix_web::test::read_body_json(response).await;
        (status, body)
    }};
}{% endraw %}

/// Sends a JSON request for `tenant` and returns status and parsed body.
macro_rules! call {
    ($service:expr, $method:ident $path:expr, tenant = $tenant:expr $(, json = $body:expr)?) => ({
        #[allow(unused_mut)]
        let mut request = $crate::helpers::for_tenant(
            actix_web::test::TestRequest::$method(),
            $path,
            $tenant,
        );
        $( request = request.set_json($body); )?
        let response = actix_web::test::call_service(&$service, request.to_request()).await;
        let status = response.status();
        let bytes = actix_web::test::read_body(response).await;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, body)
    });
}

/// Sends `request` (a `GET /metrics`) and parses the answer as Prometheus does.
pub async fn scrape<S, R, B>(service: &S, request: R) -> prometheus_parse::Scrape
where
    S: actix_web::dev::Service<
            R,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody,
{
    let response = actix_web::test::call_service(service, request).await;
    assert_eq!(response.status(), actix_web::http::StatusCode::OK);
    let content_type = response.headers().get("content-type").unwrap();
    let content_type = content_type.to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = String::from_utf8(actix_web::test::read_body(response).await.to_vec()).unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap()
}

/// The samples of `metric` whose labels include every pair of `labels`.
pub fn samples<'a>(
    scrape: &'a prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The value of the one sample of `metric` with `labels` (a counter or a gauge).
pub fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, metric, labels);
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    match found[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
}

/// The service on a free local port, as `serve` runs it.
pub fn serve(app: &TestApp) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tenancy, settings) = (app.tenancy.clone(), app.settings.clone());
    let server = actix_web::HttpServer::new(move || svc::startup::app(tenancy.clone(), &settings))
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
    actix_web::rt::spawn(server);
    port
}

/// Sends `request`, returns the whole answer.
pub fn send(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
