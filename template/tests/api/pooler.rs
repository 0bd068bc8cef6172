//! Behind PgBouncer in transaction mode (as managed PostgreSQL offers it): the default
//! (session) mode refuses to serve there, at start-up and when its connections show it
//! later; `TENANCY_POOLER=transaction` serves every tenant its own rows only, whatever
//! happens to requests, hears of changes made by other replicas within a second, and
//! survives a PostgreSQL restart.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, test, web};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::json;

use crate::cluster::Cluster;
use crate::helpers::*;
use crate::isolation::{
    cancelled_checkouts_leave_no_scope_behind, concurrent_tenants_never_see_each_other,
    many_tenants_take_turns, misbehaving_requests_leave_no_scope_behind,
};
use crate::pgbouncer::PgBouncer;
use svc::config::Settings;
use svc::db::TenantConnection;

/// PgBouncer's server connections per database and role: fewer than the service's.
pub(crate) const SERVER_CONNECTIONS: u32 = 4;

/// A service with one tenant connection, which every checkout must reuse.
const ONE_CONNECTION: [(&str, &str); 3] = [
    ("TENANCY_DATABASE_POOL_SIZE", "1"),
    ("TENANCY_DATABASE_MAX_OVERFLOW", "0"),
    ("TENANCY_MAX_TOTAL_CONNECTIONS", "1"),
];

/// A service in transaction mode on `db`, its application role through `pooler`, its
/// migrations direct; `extra` settings on top.
pub(crate) async fn spawn_behind(
    pooler: &PgBouncer,
    db: TestDatabase,
    extra: &[(&str, &str)],
) -> TestApp {
    let url = pooler.url(&db.app_url);
    let mut settings = vec![
        ("TENANCY_POOLER", "transaction"),
        ("TENANCY_DATABASE_URL", url.as_str()),
        ("TENANCY_DATABASE_POOL_TIMEOUT", "30"),
    ];
    settings.extend_from_slice(extra);
    spawn_app_on(db, &settings).await
}

/// The settings of a service on `db` with `overrides`.
fn settings_with(db: &TestDatabase, overrides: &[(&str, &str)]) -> Settings {
    let mut env: std::collections::HashMap<String, String> = db
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (key, value) in overrides {
        if value.is_empty() {
            env.remove(*key);
        } else {
            env.insert(key.to_string(), value.to_string());
        }
    }
    Settings::from_env_map(env).unwrap().0
}

#[actix_web::test]
async fn the_default_mode_refuses_to_start_behind_a_transaction_pooler() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let db = TestDatabase::create().await;
    let url = pooler.url(&db.app_url);
    let settings = settings_with(&db, &[("TENANCY_DATABASE_URL", url.as_str())]);
    let refusal = match svc::startup::prepare(&settings).await {
        Ok(_) => panic!("the session mode started behind a transaction pooler"),
        Err(error) => error.to_string(),
    };
    assert!(refusal.contains("TENANCY_POOLER=transaction"), "{refusal}");
    assert!(refusal.starts_with("TENANCY_DATABASE_URL"), "{refusal}");

    // The same pooler in session mode is a session: served.
    let Some(session) = PgBouncer::start(&server_url(), "session", SERVER_CONNECTIONS) else {
        return;
    };
    let url = session.url(&db.app_url);
    let settings = settings_with(&db, &[("TENANCY_DATABASE_URL", url.as_str())]);
    assert!(svc::startup::prepare(&settings).await.is_ok());
}

{%- if isolation != "database" %}
// (One database per tenant keeps no scope on a session: behind a pooler switched to
// transaction mode, a connection still reaches its tenant's database only.)

#[actix_web::test]
async fn a_session_pooler_switched_to_transaction_mode_is_caught_and_nothing_is_served() {
    let Some(pooler) = PgBouncer::start(&server_url(), "session", 40) else {
        return;
    };
    let db = TestDatabase::create().await;
    let url = pooler.url(&db.app_url);
    let app = spawn_app_on(
        db,
        &[
            ("TENANCY_DATABASE_URL", url.as_str()),
            ("TENANCY_DATABASE_POOL_SIZE", "1"),
            ("TENANCY_DATABASE_MAX_OVERFLOW", "0"),
            ("TENANCY_MAX_TOTAL_CONNECTIONS", "8"),
        ],
    )
    .await;
    let names: Vec<String> = (0..12).map(|i| format!("switch_{i:02}")).collect();
    app.create_tenants(&names).await;
    let service = service!(app);
    for name in &names {
        let (status, _) = call!(service, post "/api/notes", tenant = name.as_str(),
            json = json!({"title": format!("{name}-0")}));
        assert_eq!(status, StatusCode::CREATED);
    }
    // The connections open now keep their sessions; new transactions are pooled. A
    // connection may serve a few statements before a re-scope, or a statement its session
    // lost, shows the pooler (see the README): what is checked is that it is caught, and
    // that nothing is served after.
    pooler.set_mode("transaction");
    let mut caught = false;
    for _ in 0..50 {
        let answers = futures_util::future::join_all(names.iter().map(|name| {
            let service = &service;
            async move { call!(service, get "/api/notes", tenant = name.as_str()).0 }
        }))
        .await;
        // A 503 says the pooler was noticed only if the pool says so: under load, one may
        // also be a request that waited too long for a connection.
        if answers.contains(&StatusCode::SERVICE_UNAVAILABLE) {
            let health = test::call_service(
                &service,
                test::TestRequest::get().uri("/health").to_request(),
            )
            .await;
            let health = String::from_utf8_lossy(&test::read_body(health).await).into_owned();
            if health.contains("TENANCY_POOLER=transaction") {
                caught = true;
                break;
            }
        }
    }
    assert!(caught, "the pooler was not noticed");
    for name in &names {
        let (status, body) = call!(service, get "/api/notes", tenant = name.as_str());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {body}");
    }
    let (status, health) = health!(service);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert!(
        health.to_string().contains("TENANCY_POOLER=transaction"),
        "{health}"
    );
}
{%- endif %}

#[actix_web::test]
async fn twenty_tenants_times_fifty_concurrent_requests_stay_isolated_behind_the_pooler() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let app = spawn_behind(&pooler, TestDatabase::create().await, &[]).await;
    // One database per tenant: each tenant's connections are opened through the pooler.
    let (tenants, writes) = {% if isolation == "database" %}(10, 10){% else %}(20, 25){% endif %};
    concurrent_tenants_never_see_each_other(&app, tenants, writes).await;
}

#[actix_web::test]
async fn many_tenants_take_turns_behind_the_pooler_and_every_row_stays_with_its_tenant() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let app = spawn_behind(
        &pooler,
        TestDatabase::create().await,
        &[
            ("TENANCY_DATABASE_POOL_SIZE", "4"),
            ("TENANCY_DATABASE_MAX_OVERFLOW", "0"),
            ("TENANCY_MAX_TOTAL_CONNECTIONS", "8"),
        ],
    )
    .await;
    many_tenants_take_turns(&app, {% if isolation == "database" %}20{% else %}100{% endif %}).await;
}

#[actix_web::test]
async fn cancelled_checkouts_and_misbehaving_requests_leave_no_scope_behind_the_pooler() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let app = spawn_behind(&pooler, TestDatabase::create().await, &ONE_CONNECTION).await;
    cancelled_checkouts_leave_no_scope_behind(&app).await;
    let app = spawn_behind(&pooler, TestDatabase::create().await, &ONE_CONNECTION).await;
    misbehaving_requests_leave_no_scope_behind(&app).await;
}

/// The handlers below behind the tenant middleware, as the real service has them.
macro_rules! handlers_service {
    ($app:expr) => {
        tenant_routes!(
            $app,
            "/write/{status}" => write_then_answer,
            "/swallow/{savepoint}" => swallow_then_answer,
        )
    };
}

/// Writes a note, then answers with `status`.
async fn write_then_answer(mut conn: TenantConnection, status: web::Path<u16>) -> HttpResponse {
    diesel::sql_query("INSERT INTO notes (title) VALUES ('written')")
        .execute(&mut conn)
        .await
        .unwrap();
    HttpResponse::build(StatusCode::from_u16(*status).unwrap()).finish()
}

#[actix_web::test]
async fn a_request_commits_when_its_handler_succeeds_and_rolls_back_otherwise() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let app = spawn_behind(&pooler, TestDatabase::create().await, &[]).await;
    let acme = app.create_tenant("acme").await;
    let service = handlers_service!(app);
    let mut expected = 0;
    for status in [201, 409, 500, 200, 404, 302] {
        let request = for_tenant(
            test::TestRequest::get(),
            &format!("/write/{status}"),
            "acme",
        );
        let response = test::call_service(&service, request.to_request()).await;
        assert_eq!(response.status().as_u16(), status);
        if status < 400 {
            expected += 1;
        }
        // Committed before the answer left: the owner sees it at once.
        assert_eq!(
            app.db.notes_of(&acme).await,
            Some(expected),
            "after {status}"
        );
    }
}

/// Writes a note, then a note with the same id, swallowing the error (with `savepoint`,
/// inside a transaction of its own), then answers 201.
async fn swallow_then_answer(
    mut conn: TenantConnection,
    savepoint: web::Path<bool>,
) -> HttpResponse {
    let insert =
        "INSERT INTO notes (id, title) VALUES ('00000000-0000-7000-8000-000000000001', 'once')";
    diesel::sql_query(insert).execute(&mut conn).await.unwrap();
    let duplicate = if *savepoint {
        conn.transaction(async |c| diesel::sql_query(insert).execute(c).await)
            .await
    } else {
        diesel::sql_query(insert).execute(&mut conn).await
    };
    assert!(duplicate.is_err());
    HttpResponse::Created().finish()
}

#[actix_web::test]
async fn a_failed_statement_the_handler_swallowed_fails_the_request_unless_it_was_in_a_savepoint() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let app = spawn_behind(&pooler, TestDatabase::create().await, &[]).await;
    let acme = app.create_tenant("acme").await;
    let service = handlers_service!(app);
    // The error aborted the request's transaction: its first write is lost, and the
    // answer says so (the error's own problem, 409) instead of 201.
    let request = for_tenant(test::TestRequest::get(), "/swallow/false", "acme");
    let response = test::call_service(&service, request.to_request()).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(app.db.notes_of(&acme).await, Some(0));
    // Inside a handler's own transaction the savepoint takes the error back.
    let request = for_tenant(test::TestRequest::get(), "/swallow/true", "acme");
    let response = test::call_service(&service, request.to_request()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(app.db.notes_of(&acme).await, Some(1));
}

#[actix_web::test]
async fn outside_a_request_finish_commits_and_an_unfinished_connection_rolls_back() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let app = spawn_behind(&pooler, TestDatabase::create().await, &[]).await;
    let acme = app.create_tenant("acme").await;
    let insert = "INSERT INTO notes (title) VALUES ('kept')";
    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    diesel::sql_query(insert).execute(&mut conn).await.unwrap();
    conn.finish(true).await.unwrap();
    assert_eq!(app.db.notes_of(&acme).await, Some(1));

    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    diesel::sql_query(insert).execute(&mut conn).await.unwrap();
    drop(conn);
    // Rolled back before the connection serves anyone again.
    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    diesel::sql_query(insert).execute(&mut conn).await.unwrap();
    conn.finish(false).await.unwrap();
    assert_eq!(app.db.notes_of(&acme).await, Some(1));
}

#[derive(diesel::QueryableByName)]
struct Scoped {
    #[diesel(sql_type = diesel::sql_types::Text)]
    tenant: String,
}

/// The tenant a statement runs for: set for its transaction alone, so a statement outside
/// the checkout's transaction sees none.
async fn scoped(conn: &mut TenantConnection) -> String {
    let sql = "SELECT coalesce(current_setting('app.tenant_id', true), '') AS tenant";
    let scoped: Scoped = diesel::sql_query(sql).get_result(conn).await.unwrap();
    scoped.tenant
}

#[actix_web::test]
async fn the_scope_goes_with_the_first_statement_whatever_happens_to_the_ones_before() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let app = spawn_behind(&pooler, TestDatabase::create().await, &ONE_CONNECTION).await;
    let acme = app.create_tenant("acme").await;
    let acme_id = acme.id.to_string();

    // Checkouts that run nothing: finished, or dropped.
    for _ in 0..3 {
        let conn = app.tenancy.tenant_connection(&acme).await.unwrap();
        conn.finish(true).await.unwrap();
        drop(app.tenancy.tenant_connection(&acme).await.unwrap());
    }

    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    // A statement dropped before it was polled sends nothing, and leaves the scope to the
    // next one.
    drop(diesel::sql_query("INSERT INTO notes (title) VALUES ('never')").execute(&mut conn));
    assert_eq!(scoped(&mut conn).await, acme_id);
    conn.finish(false).await.unwrap();

    // A first statement cancelled in flight (with `BEGIN` and the scope): the connection
    // is rolled back before anyone reuses it, and the next checkout is scoped again.
    let mut cancelled = 0;
    for step in 0..20 {
        let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
        {
            let mut statement = diesel::sql_query("INSERT INTO notes (title) VALUES ('cancelled')")
                .execute(&mut conn);
            if futures_util::FutureExt::now_or_never(&mut statement).is_none() {
                cancelled += 1;
                if step % 2 == 1 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        drop(conn);
        let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
        assert_eq!(scoped(&mut conn).await, acme_id, "after step {step}");
        conn.finish(true).await.unwrap();
    }
    assert!(cancelled > 0, "no first statement was cancelled in flight");

    // A handler's own transaction as the first statement: a savepoint inside the scoped
    // transaction, committed with it.
    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    let inside = conn
        .transaction(async |c| {
            diesel::sql_query("INSERT INTO notes (title) VALUES ('kept')")
                .execute(&mut *c)
                .await?;
            diesel::QueryResult::Ok(scoped(c).await)
        })
        .await
        .unwrap();
    assert_eq!(inside, acme_id);
    conn.finish(true).await.unwrap();
    // Only that note: every cancelled write was rolled back.
    assert_eq!(app.db.notes_of(&acme).await, Some(1));
    // The one connection served every checkout: none left it in an unknown state.
    assert_eq!(app.tenancy.connection_stats().tenant.opened, 1);
}

#[actix_web::test]
async fn replicas_behind_the_pooler_agree_on_a_suspension_within_a_second() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let long_ttl = ("TENANCY_TENANT_CACHE_TTL", "3600");
    let a = spawn_behind(&pooler, TestDatabase::create().await, &[long_ttl]).await;
    let url = pooler.url(&a.db.app_url);
    // B listens over the migration URL; C has none, and polls.
    let b = svc::startup::prepare(&a.settings).await.unwrap();
    let c_settings = settings_with(
        &a.db,
        &[
            ("TENANCY_POOLER", "transaction"),
            ("TENANCY_DATABASE_URL", url.as_str()),
            ("TENANCY_MIGRATION_DATABASE_URL", ""),
            long_ttl,
        ],
    );
    let c = svc::startup::prepare(&c_settings).await.unwrap();
    assert!(c.polls_changes() && !b.polls_changes());
    let acme = a.create_tenant("acme").await;
    for replica in [&b, &c] {
        let service = test::init_service(app(replica.clone(), &a.settings)).await;
        let (status, _) = call!(service, get "/api/notes", tenant = "acme");
        assert_eq!(status, StatusCode::OK);
    }
    a.tenancy
        .suspend_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    let suspended = Instant::now();
    for (name, replica) in [("b (listens)", &b), ("c (polls)", &c)] {
        let service = test::init_service(app(replica.clone(), &a.settings)).await;
        loop {
            // A request sent a second after the suspension is refused, however long a
            // loaded machine then takes to answer it.
            let sent = suspended.elapsed();
            let (status, _) = call!(service, get "/api/notes", tenant = "acme");
            if status == StatusCode::FORBIDDEN {
                break;
            }
            assert_eq!(status, StatusCode::OK);
            assert!(
                sent < Duration::from_secs(1),
                "replica {name} still served a request sent {sent:?} after the suspension"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Polling is the configured way here, not a fault: the tenant cache says so and is
    // not degraded for it. (Only the cache's own part is asked: on a loaded machine a
    // check of another part may be slow for a moment.)
    let service = test::init_service(app(c.clone(), &a.settings)).await;
    let response = test::call_service(
        &service,
        test::TestRequest::get().uri("/health").to_request(),
    )
    .await;
    let health: serde_json::Value = test::read_body_json(response).await;
    let cache = &health["cache"];
    assert_eq!(
        cache["changes"], "polled: entries are read again after 0.5 s",
        "{health}"
    );
    assert!(cache["degraded"].is_null(), "{health}");
    assert_ne!(health["status"], "unhealthy", "{health}");
}

#[actix_web::test]
async fn the_transaction_mode_survives_a_postgresql_restart_behind_the_pooler() {
    let Some(cluster) = Cluster::start(&[]) else {
        return;
    };
    let Some(pooler) = PgBouncer::start(&cluster.url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let db = TestDatabase::create_on(cluster.url()).await;
    let app = spawn_behind(&pooler, db, &[("TENANCY_DATABASE_POOL_TIMEOUT", "5")]).await;
    let names: Vec<String> = (0..6).map(|i| format!("restart_{i}")).collect();
    for name in &names {
        app.create_tenant(name).await;
    }
    let service = service!(app);
    for name in &names {
        let (status, _) = call!(service, post "/api/notes", tenant = name.as_str(),
            json = json!({"title": format!("{name}-0")}));
        assert_eq!(status, StatusCode::CREATED);
    }
    cluster.restart();
    // Requests may fail while PgBouncer reconnects; none sees another tenant's rows, and
    // all are served again within seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served = 0;
    while served < names.len() * 3 {
        assert!(
            Instant::now() < deadline,
            "not served again after the restart"
        );
        for name in &names {
            let (status, body) = call!(service, get "/api/notes", tenant = name.as_str());
            if status == StatusCode::OK {
                let titles: Vec<&str> = body
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n["title"].as_str().unwrap())
                    .collect();
                assert_eq!(titles, [format!("{name}-0")], "{name}");
                served += 1;
            } else {
                assert!(status.is_server_error(), "{status} {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
