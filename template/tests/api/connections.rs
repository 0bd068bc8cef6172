//! The connection layer when PostgreSQL misbehaves: it restarts under load, it has no
//! connection slot left, a statement runs too long or slowly. Against real servers: the
//! shared one, and throwaway clusters that these tests restart.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::helpers::{TestDatabase, spawn_app_on, spawn_app_with};
use actix_web::http::StatusCode;
use actix_web::test;
use diesel_async::RunQueryDsl;
use futures_util::future::join_all;
use serde_json::json;

use svc::error::AppError;

#[actix_web::test]
async fn a_postgresql_restart_under_load_costs_no_500_no_foreign_row_and_under_a_second() {
    let Some(cluster) = Cluster::start(&[]) else {
        return;
    };
    let db = TestDatabase::create_on(cluster.url()).await;
    let app = spawn_app_on(db, &[("TENANCY_DATABASE_POOL_TIMEOUT", "2")]).await;
    let names: Vec<String> = (0..6).map(|i| format!("up_{i}")).collect();
    let service = service!(app);
    for name in &names {
        app.create_tenant(name).await;
        let (status, _) = call!(service, post "/api/notes", tenant = name.as_str(), json = json!({"title": name}));
        assert_eq!(status, StatusCode::CREATED);
    }

    // (finished at, status) of every request; bodies are checked as they come.
    let outcomes = RefCell::new(Vec::<(Instant, StatusCode)>::new());
    let up_again = RefCell::new(None::<Instant>);
    let started = Instant::now();
    let load = (0..12).map(|worker| {
        let (service, names, outcomes, up_again) = (&service, &names, &outcomes, &up_again);
        async move {
            let mut i = worker;
            loop {
                let done_at = up_again.borrow().map(|t| t + Duration::from_secs(3));
                if done_at.is_some_and(|t| Instant::now() > t) {
                    break;
                }
                let name = names[i % names.len()].as_str();
                i += 1;
                let (status, body) = call!(service, get "/api/notes", tenant = name);
                if status == StatusCode::OK {
                    let titles: Vec<&str> = body
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|n| n["title"].as_str().unwrap())
                        .collect();
                    assert_eq!(titles, [name], "{name} saw {body}");
                }
                outcomes.borrow_mut().push((Instant::now(), status));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    // Readiness (the control pool) must come back as fast as tenant requests.
    let ready = async {
        loop {
            let done_at = up_again.borrow().map(|t| t + Duration::from_secs(3));
            if done_at.is_some_and(|t| Instant::now() > t) {
                break;
            }
            let request = test::TestRequest::get().uri("/health/ready").to_request();
            let status = test::call_service(&service, request).await.status();
            if status != StatusCode::OK {
                let late = up_again
                    .borrow()
                    .is_some_and(|up| Instant::now() > up + Duration::from_secs(1));
                assert!(
                    !late,
                    "/health/ready answered {status} more than 1 s after the restart"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let cluster = std::sync::Arc::new(cluster);
    let restart = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.restart())
            .await
            .unwrap();
        *up_again.borrow_mut() = Some(Instant::now());
    };
    let ((), (), _) = tokio::join!(restart, ready, join_all(load));

    let up = up_again.borrow().unwrap();
    let outcomes = outcomes.borrow();
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, s)| *s != StatusCode::OK)
        .collect();
    let not_503: Vec<_> = failed
        .iter()
        .filter(|(_, s)| *s != StatusCode::SERVICE_UNAVAILABLE)
        .map(|(at, s)| (*at - up, *s))
        .collect();
    assert!(
        not_503.is_empty(),
        "only 503 while PostgreSQL is away; got (time after it was back, status): {not_503:?}"
    );
    let first_success = outcomes
        .iter()
        .filter(|(at, s)| *at >= up && *s == StatusCode::OK)
        .map(|(at, _)| *at)
        .min()
        .expect("no request succeeded after the restart");
    assert!(
        first_success - up < Duration::from_secs(1),
        "served again {:?} after PostgreSQL was back",
        first_success - up
    );
    let late_failures = failed
        .iter()
        .filter(|(at, _)| *at > up + Duration::from_secs(1))
        .count();
    assert_eq!(
        late_failures, 0,
        "requests failed more than 1 s after the restart"
    );
    assert!(
        outcomes.iter().filter(|(at, _)| *at < up).count() > 10,
        "the load ran while PostgreSQL restarted ({:?} in all)",
        started.elapsed()
    );
}

#[actix_web::test]
async fn without_connection_slots_the_service_holds_what_it_has_and_says_it_is_degraded() {
    let app = spawn_app_with(&[("TENANCY_DATABASE_POOL_TIMEOUT", "10")]).await;
    let names: Vec<String> = (0..6).map(|i| format!("slot_{i}")).collect();
    let service = service!(app);
    for name in &names {
        app.create_tenant(name).await;
        let (status, _) = call!(service, get "/api/notes", tenant = name.as_str());
        assert_eq!(status, StatusCode::OK);
    }
    // PostgreSQL now accepts 3 connections of the application role in all, fewer than the
    // pools would open for 30 concurrent requests.
    app.db
        .query(&format!(
            "ALTER ROLE \"{}\" CONNECTION LIMIT 3",
            app.db.app_role
        ))
        .await;
    // A limit refuses new connections only: the service may keep those it has.
    let held = app.db.open_connections().await;
    let requests = (0..30).map(|i| {
        let (service, name) = (&service, names[i % names.len()].as_str());
        async move {
            let (status, body) =
                call!(service, post "/api/notes", tenant = name, json = json!({"title": name}));
            assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        }
    });
    join_all(requests).await;
    let open = app.db.open_connections().await;
    assert!(
        open <= held.max(3),
        "{open} connections open, {held} before the limit"
    );

    let (status, body) = health!(service);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
    let reason = body["connections"]["degraded"].as_str().unwrap();
    assert!(reason.contains("53300"), "{reason}");
    let refused = &body["connections"]["tenant"]["errors"]["too_many_connections"];
    assert!(refused.as_u64().unwrap() >= 1, "{body}");
}

#[actix_web::test]
async fn a_statement_over_the_timeout_is_cancelled_and_answered_503() {
    let app = spawn_app_with(&[("TENANCY_STATEMENT_TIMEOUT", "1")]).await;
    let tenant = app.create_tenant("slow").await;
    let mut conn = app.tenancy.tenant_connection(&tenant).await.unwrap();
    let started = Instant::now();
    let error = diesel::sql_query("SELECT pg_sleep(5)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4));
    let response = actix_web::ResponseError::error_response(&AppError::from(error));
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    // Counted by kind (/health, /metrics).
    let errors = app.tenancy.connection_stats().tenant.errors;
    assert_eq!(errors["statement_timeout"], 1, "{errors:?}");
}

/// Log lines written by a subscriber of the test's own.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_web::test]
async fn a_slow_statement_is_logged_with_its_tenant_and_without_its_values() {
    use diesel::sql_types::Text;
    use tracing::Instrument;

    let app = spawn_app_with(&[("TENANCY_SLOW_QUERY_MS", "40")]).await;
    let acme = app.create_tenant("acme").await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_writer(move || writer.clone())
        .finish();
    let _only_here = tracing::subscriber::set_default(subscriber);
    let request = tracing::info_span!("request", tenant.identifier = "acme");
    async {
        let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
        diesel::sql_query("SELECT pg_sleep(0.06), $1::text AS secret")
            .bind::<Text, _>("secret-value")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    .instrument(request)
    .await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        !text.contains("secret-value"),
        "a bind value was logged: {text}"
    );
    let slow: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["fields"]["message"] == "slow statement")
        .filter(|event| {
            let statement = event["fields"]["statement"].as_str().unwrap_or_default();
            statement.contains("pg_sleep")
        })
        .collect();
    assert_eq!(slow.len(), 1, "{text}");
    let event = &slow[0];
    assert_eq!(event["level"], "WARN", "{event}");
    assert!(
        event["fields"]["duration_ms"].as_u64().unwrap() >= 60,
        "{event}"
    );
    assert_eq!(event["span"]["tenant.identifier"], "acme", "{event}");
}

#[actix_web::test]
async fn a_frozen_postgresql_is_answered_503_in_time_and_served_again_once_it_thaws() {
    let Some(cluster) = Cluster::start(&[]) else {
        return;
    };
    let db = TestDatabase::create_on(cluster.url()).await;
    let app = spawn_app_on(
        db,
        &[
            ("TENANCY_STATEMENT_TIMEOUT", "2"),
            ("TENANCY_DATABASE_POOL_TIMEOUT", "2"),
        ],
    )
    .await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);

    // Every server process stopped for 15 s: nothing is closed, nothing answers, and the
    // server's own statement timeout cannot fire.
    cluster.freeze_for(Duration::from_secs(15));
    let started = Instant::now();
    let request = crate::helpers::for_tenant(test::TestRequest::get(), "/api/notes", "acme");
    let response = test::call_service(&service, request.to_request()).await;
    let waited = started.elapsed();
    cluster.thaw();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    // The statement timeout and a margin (3 s), not as long as the freeze lasts.
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    let errors = app.tenancy.connection_stats().tenant.errors;
    assert_eq!(errors["connection_lost"], 1, "{errors:?}");

    // The connection that went unanswered was closed, not reused: the next request is
    // served.
    let (status, body) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK, "{body}");
}
