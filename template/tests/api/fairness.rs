//! One tenant cannot starve the others of connections: a tenant holds at most its share
//! (`TENANCY_TENANT_MAX_CONNECTIONS`, or its own limit in the registry), and when every
//! connection is taken, the next one that frees goes to the next tenant in line, not to
//! whoever asked first. A tenant's own statement timeout holds for its statements only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use diesel::sql_types::Double;
use diesel_async::RunQueryDsl;
use futures_util::future::join_all;

use crate::helpers::*;
use svc::db::TenantConnection;
use svc::domain::{TenantIdentifier, TenantLimits};
use svc::error::AppError;

/// Per tenant (as named in the path): the connections its handlers hold now, and the most
/// they held at once.
static HELD: Mutex<Option<HashMap<String, (u32, u32)>>> = Mutex::new(None);

struct Holding(String);

impl Holding {
    fn enter(tenant: &str) -> Self {
        let mut held = HELD.lock().unwrap();
        let (now, most) = held
            .get_or_insert_default()
            .entry(tenant.to_owned())
            .or_default();
        *now += 1;
        *most = (*most).max(*now);
        Self(tenant.to_owned())
    }

    /// The connections `tenant`'s handlers hold now, and the most they held at once.
    fn counts(tenant: &str) -> (u32, u32) {
        HELD.lock()
            .unwrap()
            .as_ref()
            .and_then(|h| h.get(tenant))
            .map_or((0, 0), |c| *c)
    }

    fn most(tenant: &str) -> u32 {
        Self::counts(tenant).1
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Some((now, _)) = HELD
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|h| h.get_mut(&self.0))
        {
            *now -= 1;
        }
    }
}

/// Holds its tenant's connection for `ms` milliseconds (one statement).
async fn hold(mut conn: TenantConnection, path: web::Path<(String, u64)>) -> HttpResponse {
    let (tenant, ms) = path.into_inner();
    let _holding = Holding::enter(&tenant);
    diesel::sql_query("SELECT pg_sleep($1)")
        .bind::<Double, _>(ms as f64 / 1000.0)
        .execute(&mut conn)
        .await
        .unwrap();
    HttpResponse::Ok().finish()
}

/// The route of [`hold`], and a request to it for `tenant` as a future of its status.
macro_rules! holding_service {
    ($app:expr, $service:ident, $request:ident) => {
        let $service = tenant_routes!($app, "/hold/{tenant}/{ms}" => hold);
        let $request = |tenant: &str, ms: u64| {
            let path = format!("/hold/{tenant}/{ms}");
            let request = for_tenant(actix_web::test::TestRequest::get(), &path, tenant);
            let service = &$service;
            async move {
                let response = actix_web::test::call_service(service, request.to_request());
                response.await.status()
            }
        };
    };
}

#[actix_web::test]
async fn a_quiet_tenant_waits_for_one_statement_at_most_behind_a_flooding_one() {
    const STATEMENT: u64 = 800;
    // Four connections, all of which the flooding tenant may hold; the last in its line
    // waits six statements.
    let app = spawn_app_with(&[
        ("TENANCY_MAX_TOTAL_CONNECTIONS", "4"),
        ("TENANCY_TENANT_MAX_CONNECTIONS", "4"),
        ("TENANCY_DATABASE_POOL_TIMEOUT", "30"),
    ])
    .await;
    app.create_tenant("fair_flood").await;
    app.create_tenant("fair_quiet").await;
    holding_service!(app, service, request);

    let flooding = join_all((0..24).map(|_| request("fair_flood", STATEMENT)));
    let quiet = async {
        // Once the flood holds every connection and 20 of its requests wait in line (the
        // clock starts then: opening the flood's connections takes longer on a busy
        // machine).
        let holds_all = async {
            while Holding::counts("fair_flood").0 < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        // Should it never (the assertions below say so), the flood ends all the same.
        let _ = tokio::time::timeout(Duration::from_secs(10), holds_all).await;
        let started = Instant::now();
        let status = request("fair_quiet", 1).await;
        (status, started.elapsed())
    };
    let (flooded, (quiet, waited)) = tokio::join!(flooding, quiet);

    assert!(flooded.iter().all(|s| *s == StatusCode::OK), "{flooded:?}");
    assert_eq!(quiet, StatusCode::OK);
    assert_eq!(Holding::most("fair_flood"), 4);
    // Served by the next connection that frees: one statement's time. In arrival order it
    // would have waited for the 20 ahead of it, five statements.
    assert!(
        waited < Duration::from_millis(STATEMENT * 2),
        "the quiet tenant waited {waited:?} behind the flood"
    );
}

#[actix_web::test]
async fn a_tenant_holds_no_more_connections_than_its_limit_set_or_its_own() {
    let app = spawn_app_with(&[
        ("TENANCY_MAX_TOTAL_CONNECTIONS", "8"),
        ("TENANCY_TENANT_MAX_CONNECTIONS", "2"),
    ])
    .await;
    app.create_tenant("bound_set").await;
    app.create_tenant("bound_own").await;
    let own = TenantIdentifier::parse("bound_own").unwrap();
    let limits: TenantLimits =
        serde_json::from_value(serde_json::json!({"max_connections": 3})).unwrap();
    let tenant = app
        .tenancy
        .set_limits(&crate::helpers::operator(), &own, limits)
        .await
        .unwrap();
    assert_eq!(tenant.limits, limits);
    holding_service!(app, service, request);

    let (set, own) = tokio::join!(
        join_all((0..8).map(|_| request("bound_set", 200))),
        join_all((0..8).map(|_| request("bound_own", 200))),
    );

    assert!(set.iter().chain(&own).all(|s| *s == StatusCode::OK));
    assert_eq!(Holding::most("bound_set"), 2);
    assert_eq!(Holding::most("bound_own"), 3);
    // Back to the setting.
    let tenant = app
        .tenancy
        .set_limits(
            &crate::helpers::operator(),
            &TenantIdentifier::parse("bound_own").unwrap(),
            TenantLimits::default(),
        )
        .await
        .unwrap();
    assert_eq!(tenant.limits.max_connections, None);
}

/// One statement of `ms` milliseconds; its error as the service answers it.
async fn statement(
    mut conn: TenantConnection,
    ms: web::Path<u64>,
) -> Result<HttpResponse, AppError> {
    diesel::sql_query("SELECT pg_sleep($1)")
        .bind::<Double, _>(*ms as f64 / 1000.0)
        .execute(&mut conn)
        .await?;
    Ok(HttpResponse::Ok().finish())
}

#[actix_web::test]
async fn a_tenants_own_statement_timeout_holds_for_its_statements_only() {
    // One connection, which every tenant's requests share in turn.
    let app = spawn_app_with(&[("TENANCY_MAX_TOTAL_CONNECTIONS", "1")]).await;
    app.create_tenant("timeout_own").await;
    app.create_tenant("timeout_set").await;
    let own = TenantIdentifier::parse("timeout_own").unwrap();
    let service = tenant_routes!(app, "/statement/{ms}" => statement);
    let run = |tenant: &'static str| {
        let request = for_tenant(
            actix_web::test::TestRequest::get(),
            "/statement/1500",
            tenant,
        );
        let service = &service;
        async move {
            let response = actix_web::test::call_service(service, request.to_request());
            response.await.status()
        }
    };
    let one_second: TenantLimits =
        serde_json::from_value(serde_json::json!({"statement_timeout": 1})).unwrap();

    // Before and after its own timeout, on the connection the other tenant used between.
    for (limits, expected) in [
        (TenantLimits::default(), StatusCode::OK),
        (one_second, StatusCode::SERVICE_UNAVAILABLE),
        (TenantLimits::default(), StatusCode::OK),
        (one_second, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        app.tenancy
            .set_limits(&crate::helpers::operator(), &own, limits)
            .await
            .unwrap();
        assert_eq!(run("timeout_own").await, expected, "{limits:?}");
        assert_eq!(run("timeout_set").await, StatusCode::OK, "{limits:?}");
    }
    // A change reaches the connection scoped to the tenant already.
    for (limits, expected) in [
        (TenantLimits::default(), StatusCode::OK),
        (TenantLimits::default(), StatusCode::OK),
        (one_second, StatusCode::SERVICE_UNAVAILABLE),
        (one_second, StatusCode::SERVICE_UNAVAILABLE),
        (TenantLimits::default(), StatusCode::OK),
    ] {
        app.tenancy
            .set_limits(&crate::helpers::operator(), &own, limits)
            .await
            .unwrap();
        assert_eq!(run("timeout_own").await, expected, "{limits:?}");
    }
}

#[actix_web::test]
async fn metrics_count_the_requests_that_waited_for_a_connection_per_tenant() {
    let app = spawn_app_with(&[
        ("TENANCY_MAX_TOTAL_CONNECTIONS", "1"),
        ("TENANCY_METRICS_TENANT_LABELS", "true"),
    ])
    .await;
    app.create_tenant("waits_busy").await;
    app.create_tenant("waits_alone").await;
    let service = service!(app);
    let list = |tenant: &'static str| {
        let request = for_tenant(actix_web::test::TestRequest::get(), "/api/notes", tenant);
        let service = &service;
        async move {
            let response = actix_web::test::call_service(service, request.to_request());
            response.await.status()
        }
    };

    // Ten at once on one connection: nine wait. One alone: none.
    let statuses = join_all((0..10).map(|_| list("waits_busy"))).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(list("waits_alone").await, StatusCode::OK);

    let metrics = actix_web::test::TestRequest::get().uri("/metrics");
    let scrape = scrape(&service, metrics.to_request()).await;
    let busy = value(
        &scrape,
        "tenant_connection_waits_total",
        &[("tenant", "waits_busy")],
    );
    assert!((1.0..=9.0).contains(&busy), "{busy}");
    let alone = samples(
        &scrape,
        "tenant_connection_waits_total",
        &[("tenant", "waits_alone")],
    );
    assert!(alone.is_empty(), "{alone:?}");
    assert!(value(&scrape, "tenancy_pool_waits_total", &[("pool", "tenant")]) >= busy);
}
