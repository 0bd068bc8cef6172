//! `/metrics`: Prometheus text that a Prometheus parser reads, with the metrics operators
//! need, bounded labels, and an optional token.

use std::collections::HashSet;

use actix_web::http::StatusCode;
use actix_web::test;
use prometheus_parse::{Sample, Value};

use crate::helpers::*;
use svc::domain::TenantIdentifier;

/// A request for `/metrics` (with `token`, if any).
fn metrics_request(token: Option<&str>) -> test::TestRequest {
    let request = test::TestRequest::get().uri("/metrics");
    match token {
        Some(token) => request.insert_header(("Authorization", format!("Bearer {token}"))),
        None => request,
    }
}

#[actix_web::test]
async fn metrics_parse_and_carry_requests_errors_tenants_connections_and_cache() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    app.tenancy
        .suspend_tenant(
            &crate::helpers::operator(),
            &TenantIdentifier::parse("globex").unwrap(),
        )
        .await
        .unwrap();
    let service = service!(app);
    for _ in 0..3 {
        let (status, _) = call!(service, get "/api/notes", tenant = "acme");
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = call!(service, get "/api/notes", tenant = "ghost");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call!(service, get "/api/notes", tenant = "globex");
    assert_eq!(status, StatusCode::FORBIDDEN);

    let scrape = scrape(&service, metrics_request(None).to_request()).await;
    let ok = [
        ("route", "/api/notes"),
        ("status", "200"),
        ("method", "GET"),
    ];
    assert_eq!(value(&scrape, "http_requests_total", &ok), 3.0);
    let durations = samples(&scrape, "http_request_duration_seconds", &ok);
    match durations.as_slice() {
        [
            Sample {
                value: Value::Histogram(buckets),
                ..
            },
        ] => assert_eq!(buckets.last().map(|b| b.count), Some(3.0), "{buckets:?}"),
        other => panic!("no duration histogram: {other:?}"),
    }
    assert_eq!(
        value(&scrape, "http_request_duration_seconds_count", &ok),
        3.0
    );
    assert_eq!(
        value(&scrape, "app_errors_total", &[("kind", "tenant_not_found")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "app_errors_total", &[("kind", "forbidden")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "tenancy_tenants", &[("status", "active")]),
        1.0
    );
    assert_eq!(
        value(&scrape, "tenancy_tenants", &[("status", "suspended")]),
        1.0
    );
    assert_eq!(value(&scrape, "tenancy_registry_up", &[]), 1.0);
    assert_eq!(
        value(
            &scrape,
            "tenancy_operations_total",
            &[("operation", "create"), ("result", "ok")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "tenancy_operations_total",
            &[("operation", "suspend"), ("result", "ok")]
        ),
        1.0
    );
    let tenant_pool = [("pool", "tenant"), ("state", "max")];
    assert_eq!(
        value(&scrape, "tenancy_pool_connections", &tenant_pool),
        40.0
    );
    assert!(
        value(
            &scrape,
            "tenancy_pool_connections_opened_total",
            &[("pool", "tenant")]
        ) >= 1.0
    );
    for kind in ["reused", "rescoped"] {
        value(
            &scrape,
            "tenancy_pool_checkouts_total",
            &[("pool", "tenant"), ("kind", kind)],
        );
    }
    let hits = [("level", "local"), ("result", "hit")];
    assert!(value(&scrape, "tenancy_cache_requests_total", &hits) >= 2.0);
    let misses = [("level", "local"), ("result", "miss")];
    assert!(value(&scrape, "tenancy_cache_requests_total", &misses) >= 1.0);
    assert_eq!(value(&scrape, "tenancy_cache_watching", &[]), 1.0);
    // Database errors by pool and kind, zero included.
    let timeouts = [("pool", "tenant"), ("kind", "statement_timeout")];
    assert_eq!(
        value(&scrape, "tenancy_database_errors_total", &timeouts),
        0.0
    );
    // No tenant label unless asked for.
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| s.labels.get("tenant").is_none())
    );
}

#[actix_web::test]
async fn tenant_labels_are_opt_in_and_bounded_whatever_the_number_of_tenants() {
    let app = spawn_app_with(&[
        ("TENANCY_METRICS_TENANT_LABELS", "true"),
        ("TENANCY_METRICS_TENANT_LABEL_LIMIT", "3"),
    ])
    .await;
    for i in 0..5 {
        app.create_tenant(&format!("real{i}")).await;
    }
    let service = service!(app);
    for i in 0..5 {
        let (status, _) = call!(service, get "/api/notes", tenant = &format!("real{i}"));
        assert_eq!(status, StatusCode::OK);
    }
    // 10,000 more distinct tenants, none registered: no label of their own, no new series.
    for i in 0..10_000 {
        let (status, _) = call!(service, get "/api/notes", tenant = &format!("made_up_{i}"));
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let scrape = scrape(&service, metrics_request(None).to_request()).await;
    let tenants: HashSet<&str> = scrape
        .samples
        .iter()
        .filter_map(|s| s.labels.get("tenant"))
        .collect();
    assert_eq!(tenants.len(), 4, "{tenants:?}");
    assert!(tenants.contains("other"));
    assert_eq!(
        value(&scrape, "tenant_requests_total", &[("tenant", "other")]),
        2.0
    );
    let series = samples(&scrape, "http_requests_total", &[]).len();
    assert!(series <= 3, "{series} series of http_requests_total");
}

#[actix_web::test]
async fn with_a_token_metrics_answer_only_the_bearer() {
    let token = "metrics-token-0123456789";
    let app = spawn_app_with(&[("TENANCY_METRICS_TOKEN", token)]).await;
    let service = service!(app);
    for header in [None, Some("Bearer wrong"), Some("Basic xyz")] {
        let mut request = metrics_request(None);
        if let Some(header) = header {
            request = request.insert_header(("Authorization", header));
        }
        let response = test::call_service(&service, request.to_request()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header:?}");
    }
    let scrape = scrape(&service, metrics_request(Some(token)).to_request()).await;
    assert!(!scrape.samples.is_empty());
}
