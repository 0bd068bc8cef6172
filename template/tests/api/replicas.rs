//! Several replicas on one registry: a change made anywhere (through one replica, or with
//! plain SQL) is served by every other replica within a second, long before the cache's
//! TTL, and a replica that cannot hear of changes trusts its cache for a second only.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::test;

use crate::helpers::*;
use svc::domain::TenantIdentifier;

/// Far longer than any test: only an announced change can refresh an entry.
const LONG_TTL: (&str, &str) = ("TENANCY_TENANT_CACHE_TTL", "3600");
const WITHIN: Duration = Duration::from_secs(1);

/// Asks `$service` for `$tenant`'s notes every 10 ms until it answers `$want`; fails
/// after `WITHIN`. Gives how long it took.
macro_rules! answers_within {
    ($service:expr, $tenant:expr, $want:expr) => ({
        let started = Instant::now();
        loop {
            let (status, body) = call!($service, get "/api/notes", tenant = $tenant);
            if status == $want {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < WITHIN,
                "still {status} {body} after {:?}, want {}",
                started.elapsed(),
                $want
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[actix_web::test]
async fn a_change_made_on_one_replica_is_served_by_the_others_within_a_second() {
    let a = spawn_app_with(&[LONG_TTL]).await;
    let b = svc::startup::prepare(&a.settings).await.unwrap();
    let service_b = test::init_service(app(b.clone(), &a.settings)).await;
    let acme = a.create_tenant("acme").await;
    let (status, _) = call!(service_b, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);

    a.tenancy
        .suspend_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    answers_within!(service_b, "acme", StatusCode::FORBIDDEN);
    a.tenancy
        .activate_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    answers_within!(service_b, "acme", StatusCode::OK);
    a.tenancy
        .delete_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    answers_within!(service_b, "acme", StatusCode::NOT_FOUND);

    // A tenant B has just been told does not exist is served once A creates it.
    let (status, _) = call!(service_b, get "/api/notes", tenant = "newco");
    assert_eq!(status, StatusCode::NOT_FOUND);
    a.create_tenant("newco").await;
    answers_within!(service_b, "newco", StatusCode::OK);
    assert!(b.cache_stats().changes > 0, "{:?}", b.cache_stats());
}

#[actix_web::test]
async fn a_change_made_with_plain_sql_is_served_within_a_second() {
    let app = spawn_app_with(&[LONG_TTL]).await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    // No updated_at set by hand: the registry's trigger moves it forward itself.
    app.db
        .query("UPDATE tenancy.tenants SET status = 'suspended' WHERE identifier = 'acme'")
        .await;
    answers_within!(service, "acme", StatusCode::FORBIDDEN);
    app.db
        .query("UPDATE tenancy.tenants SET status = 'active' WHERE identifier = 'acme'")
        .await;
    answers_within!(service, "acme", StatusCode::OK);
}

#[actix_web::test]
async fn without_announcements_the_cache_trusts_a_second_says_so_and_recovers() {
    let app = spawn_app_with(&[LONG_TTL]).await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    assert!(app.tenancy.cache_stats().watching);

    // Cut the listening connection, and keep it cut: the role may not log in for now
    // (the connections it has stay open).
    let role = &app.db.app_role;
    app.db
        .query(&format!("ALTER ROLE \"{role}\" NOLOGIN"))
        .await;
    app.db
        .query(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = '{role}' AND query LIKE 'LISTEN %'"
        ))
        .await;
    let started = Instant::now();
    while app.tenancy.cache_stats().watching {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still watching"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = health!(service);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(body["cache"]["degraded"].is_string(), "{body}");

    // Suspended now, unheard of: the cached answer is trusted for a second at most.
    app.db
        .query("UPDATE tenancy.tenants SET status = 'suspended' WHERE identifier = 'acme'")
        .await;
    answers_within!(service, "acme", StatusCode::FORBIDDEN);
    assert!(!app.tenancy.cache_stats().watching);
    app.db.query(&format!("ALTER ROLE \"{role}\" LOGIN")).await;

    // Back: the listening connection returns by itself, and changes are heard again.
    let started = Instant::now();
    while !app.tenancy.cache_stats().watching {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not watching again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let changes = app.tenancy.cache_stats().changes;
    app.tenancy
        .activate_tenant(
            &crate::helpers::operator(),
            &TenantIdentifier::parse("acme").unwrap(),
        )
        .await
        .unwrap();
    answers_within!(service, "acme", StatusCode::OK);
    let started = Instant::now();
    while app.tenancy.cache_stats().changes == changes {
        assert!(
            started.elapsed() < WITHIN,
            "the activation was not announced"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
