//! Test set-up: every test gets its own freshly created database on the server named by
//! `TENANCY_TEST_DATABASE_URL` (default: the local PostgreSQL), dropped when the test ends.
//! No test doubles: the real server, real schemas, real connections.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use actix_web::web;

use {{crate_name}}::config::Settings;
use {{crate_name}}::domain::{Tenant, TenantIdentifier};
use {{crate_name}}::tenancy::Tenancy;
use {{crate_name}}::tenancy::lifecycle::NewTenant;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";
const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn server_url() -> String {
    std::env::var("TENANCY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.into())
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
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

/// Runs `sql` on the server's maintenance database.
pub async fn server_exec(sql: &str) {
    let (client, connection) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at TENANCY_TEST_DATABASE_URL ({e})"));
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let name = format!("tenancy_test_{}", uuid::Uuid::new_v4().simple());
        server_exec(&format!("CREATE DATABASE \"{name}\"")).await;
        let url = with_database(&server_url(), &name);
        Self { name, url }
    }

    /// Runs `sql` in this database and returns the rows as text.
    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        let rows = client.simple_query(sql).await.unwrap();
        drop(client);
        let _ = driver.await;
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
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
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop may run inside an async test: do the blocking work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(server_exec(&sql));
        })
        .join();
    }
}

/// A `Tenancy` on a fresh, migrated database. Fields drop in order: pools first.
pub struct TestApp {
    pub tenancy: web::Data<Tenancy>,
    pub db: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Like `spawn_app`, with extra `TENANCY_*` settings.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let db = TestDatabase::create().await;
    let mut env: HashMap<String, String> = HashMap::from([
        ("TENANCY_DATABASE_URL".to_string(), db.url.clone()),
        ("TENANCY_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
    ]);
    for (key, value) in extra {
        env.insert(key.to_string(), value.to_string());
    }
    let (settings, warnings) = Settings::from_env_map(env).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let tenancy = Tenancy::new(settings).unwrap();
    tenancy.migrate_control().await.unwrap();
    TestApp {
        tenancy: web::Data::new(tenancy),
        db,
    }
}

impl TestApp {
    pub async fn create_tenant(&self, identifier: &str) -> Tenant {
        self.tenancy
            .create_tenant(NewTenant {
                identifier: TenantIdentifier::parse(identifier).unwrap(),
                name: format!("Tenant {identifier}"),
                metadata: serde_json::json!({}),
            })
            .await
            .unwrap()
    }
}

/// Makes `$app` an initialised test service of the generated application.
#[macro_export]
macro_rules! service {
    ($app:expr) => {
        actix_web::test::init_service({{crate_name}}::startup::app($app.tenancy.clone())).await
    };
}

/// Sends a JSON request for `tenant` and returns status and parsed body.
#[macro_export]
macro_rules! call {
    ($service:expr, $method:ident $path:expr, tenant = $tenant:expr $(, json = $body:expr)?) => ({
        #[allow(unused_mut)]
        let mut request = actix_web::test::TestRequest::$method()
            .uri($path)
            .insert_header(("X-Tenant-ID", $tenant));
        $( request = request.set_json($body); )?
        let response = actix_web::test::call_service(&$service, request.to_request()).await;
        let status = response.status();
        let bytes = actix_web::test::read_body(response).await;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, body)
    });
}
