//! Request rate limits per tenant (`TENANCY_RATE_LIMIT`, a tenant's own in the registry):
//! a tenant over its limit gets 429 with `Retry-After` and the `RateLimit-Policy` /
//! `RateLimit` headers, other tenants are served, and unknown tenants never get a bucket.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::test;

use crate::helpers::*;
use svc::domain::{TenantIdentifier, TenantLimits};

/// What these tests' services are given besides their own limits.
{%- if redis_cache %}
const SETTINGS: &[(&str, &str)] = &[
    // The limit is taken in Redis within TENANCY_REDIS_TIMEOUT (100 ms by default), which a
    // busy test machine can run out; a limit that cannot be checked is not enforced (fail
    // open), and its answer has no rate-limit headers.
    ("TENANCY_REDIS_TIMEOUT", "2000"),
];
{%- else %}
const SETTINGS: &[(&str, &str)] = &[];
{%- endif %}

/// `GET /api/notes` for `tenant`: status, and the headers a rate limit adds.
macro_rules! notes {
    ($service:expr, $tenant:expr) => {
        async {
            let request = for_tenant(test::TestRequest::get(), "/api/notes", $tenant);
            let response = test::call_service(&$service, request.to_request()).await;
            let header = |name: &str| {
                (response.headers().get(name)).map(|v| v.to_str().unwrap_or_default().to_owned())
            };
            let headers = [
                header("ratelimit-policy"),
                header("ratelimit"),
                header("retry-after"),
            ];
            let problem = header("content-type").is_some_and(|t| t == "application/problem+json");
            (response.status(), headers, problem)
        }
    };
}

#[actix_web::test]
async fn a_tenant_over_its_rate_gets_429_with_the_headers_and_the_others_are_served() {
    let limits = [
        ("TENANCY_RATE_LIMIT", "1"),
        ("TENANCY_RATE_LIMIT_BURST", "5"),
        ("TENANCY_METRICS_TENANT_LABELS", "true"),
    ];
    let app = spawn_app_with(&[SETTINGS, &limits].concat()).await;
    app.create_tenant("rate_busy").await;
    app.create_tenant("rate_quiet").await;
    let service = service!(app);
    let policy = Some("\"tenant\";q=5;w=5".to_owned());

    // Five at once, then none until a second has passed. The eight requests must come within
    // that second, or a refill cannot be told from a leak: on a machine too busy for that,
    // the bucket is left to fill again and they are sent again.
    let mut limited = 0;
    let mut started = Instant::now();
    for round in 1..=3 {
        started = Instant::now();
        let mut answers = Vec::new();
        for _ in 0..8 {
            answers.push(notes!(service, "rate_busy").await);
        }
        let too_many = |answer: &&(StatusCode, _, _)| answer.0 == StatusCode::TOO_MANY_REQUESTS;
        limited += answers.iter().filter(too_many).count();
        if started.elapsed() >= Duration::from_secs(1) && round < 3 {
            tokio::time::sleep(Duration::from_millis(5500)).await;
            continue;
        }
        for (left, (status, headers, _)) in (0..5).rev().zip(&answers) {
            assert_eq!(*status, StatusCode::OK, "{headers:?}");
            assert_eq!(headers[0], policy);
            let state = headers[1].clone().unwrap_or_default();
            assert!(
                state.starts_with(&format!("\"tenant\";r={left};t=")),
                "{state}"
            );
        }
        for (status, headers, problem) in &answers[5..] {
            assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{answers:?}");
            assert!(problem);
            assert_eq!(headers[0], policy);
            assert_eq!(headers[1].as_deref(), Some("\"tenant\";r=0;t=1"));
            assert_eq!(headers[2].as_deref(), Some("1"));
        }
        break;
    }
    // Its neighbour has a bucket of its own.
    let (status, headers, _) = notes!(service, "rate_quiet").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[0], policy);
    // An unknown tenant is answered 404, limited or not, and leaves nothing behind.
    for _ in 0..10 {
        assert_eq!(
            notes!(service, "rate_nobody").await.0,
            StatusCode::NOT_FOUND
        );
    }
{%- unless redis_cache %}
    assert_eq!(app.tenancy.rate.tracked(), 2);
{%- endunless %}
    assert_eq!(app.tenancy.rate.limited(), limited as u64);
    let scrape = scrape(
        &service,
        test::TestRequest::get().uri("/metrics").to_request(),
    )
    .await;
    assert_eq!(
        value(&scrape, "tenancy_rate_limited_total", &[]),
        limited as f64
    );
    let busy = [("tenant", "rate_busy"), ("status", "429")];
    assert_eq!(
        value(&scrape, "tenant_requests_total", &busy),
        limited as f64
    );

    // A second later, one more: one a second since the bucket ran dry, which was after
    // `started` (on a busy machine the checks above can take more than a second of it).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut served = 0;
    while notes!(service, "rate_busy").await.0 == StatusCode::OK {
        served += 1;
        assert!(served <= 5, "the burst came back whole");
    }
    let most = started.elapsed().as_secs() + 1;
    assert!(
        (1..=most).contains(&served),
        "{served} served again, {most} at most"
    );
}

#[actix_web::test]
async fn a_tenants_own_rate_overrides_the_setting_and_without_either_nothing_is_limited() {
    let app = spawn_app_with(SETTINGS).await;
    app.create_tenant("rate_free").await;
    app.create_tenant("rate_own").await;
    let service = service!(app);
    for _ in 0..30 {
        let (status, headers, _) = notes!(service, "rate_free").await;
        assert_eq!((status, &headers), (StatusCode::OK, &[None, None, None]));
    }

    let own = TenantIdentifier::parse("rate_own").unwrap();
    let limits: TenantLimits =
        serde_json::from_value(serde_json::json!({"rate_limit": 2, "rate_limit_burst": 3}))
            .unwrap();
    app.tenancy
        .set_limits(&crate::helpers::operator(), &own, limits)
        .await
        .unwrap();
    // Five at once: three served, two limited, if they all come within the half second a
    // token takes to come back (else, as above, once the bucket is full again).
    for round in 1..=3 {
        let started = Instant::now();
        let statuses: Vec<StatusCode> = futures_util::future::join_all(
            (0..5).map(|_| async { notes!(service, "rate_own").await.0 }),
        )
        .await;
        if started.elapsed() >= Duration::from_millis(500) && round < 3 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let served = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let limited = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((served, limited), (3, 2), "{statuses:?}");
        break;
    }
    let (_, headers, _) = notes!(service, "rate_own").await;
    assert_eq!(headers[0].as_deref(), Some("\"tenant\";q=3;w=2"));
    // The others are still free.
    assert_eq!(notes!(service, "rate_free").await.1, [None, None, None]);
}
