//! Tenant isolation through the HTTP app, against a real PostgreSQL: concurrent tenants
//! never see each other's rows, and a pooled connection never carries one tenant's scope
//! into another tenant's request, whatever happens to the request.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use crate::helpers::{TestApp, spawn_app_with};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, test};
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::FutureExt;
use futures_util::future::join_all;
use serde_json::json;

use svc::db::TenantConnection;
use svc::domain::Tenant;

/// `tenants` tenants each get `writes` note creations and `writes` listings, all sent at
/// once (`2 × writes` concurrent requests per tenant); every listing must contain only
/// that tenant's notes, and every tenant ends with exactly its own `writes` notes.
pub(crate) async fn concurrent_tenants_never_see_each_other(
    app: &TestApp,
    tenants: usize,
    writes: usize,
) {
    let names: Vec<String> = (0..tenants).map(|i| format!("iso_{i:02}")).collect();
    app.create_tenants(&names).await;
    let service = service!(app);

    let mut requests = Vec::new();
    for name in &names {
        for j in 0..writes {
            let service = &service;
            requests.push(
                async move {
                    let (status, body) = call!(service, post "/api/notes", tenant = name.as_str(),
                        json = json!({"title": format!("{name}-{j}")}));
                    assert_eq!(status, StatusCode::CREATED, "create for {name}: {body}");
                }
                .boxed_local(),
            );
            requests.push(
                async move {
                    let (status, body) =
                        call!(service, get "/api/notes?limit=100", tenant = name.as_str());
                    assert_eq!(status, StatusCode::OK, "list for {name}: {body}");
                    for note in body.as_array().unwrap() {
                        let title = note["title"].as_str().unwrap();
                        assert!(title.starts_with(&format!("{name}-")), "{name} saw {title}");
                    }
                }
                .boxed_local(),
            );
        }
    }
    join_all(requests).await;

    for name in &names {
        let (status, body) = call!(service, get "/api/notes?limit=100", tenant = name.as_str());
        assert_eq!(status, StatusCode::OK);
        let titles: Vec<&str> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["title"].as_str().unwrap())
            .collect();
        assert_eq!(titles.len(), writes, "{name} has {titles:?}");
        assert!(
            titles.iter().all(|t| t.starts_with(&format!("{name}-"))),
            "{name}: {titles:?}"
        );
    }
}

/// An app whose tenant pools hold `per_tenant` connections, `cap` in all.
async fn spawn_with_pools(per_tenant: u32, cap: u32) -> TestApp {
    let per_tenant = per_tenant.to_string();
    let cap = cap.to_string();
    spawn_app_with(&[
        ("TENANCY_DATABASE_POOL_SIZE", per_tenant.as_str()),
        ("TENANCY_DATABASE_MAX_OVERFLOW", "0"),
        ("TENANCY_MAX_TOTAL_CONNECTIONS", cap.as_str()),
        ("TENANCY_DATABASE_POOL_TIMEOUT", "30"),
    ])
    .await
}

/// The pools report at most `cap` tenant connections, and PostgreSQL agrees.
async fn assert_connections_within(app: &TestApp, cap: u32) {
    let stats = app.tenancy.connection_stats().tenant;
    assert!(stats.open_connections <= cap, "{stats:?}");
    let open = app.db.open_connections().await;
    // The tenant cap, the control pool and the connection that listens for tenant changes.
    let control = app.tenancy.settings.database.control_pool_size;
    assert!(open <= cap + control + 1, "{open} connections open");
}

#[actix_web::test]
async fn twenty_tenants_times_fifty_concurrent_requests_stay_isolated() {
    let app = spawn_with_pools(2, 40).await;
    concurrent_tenants_never_see_each_other(&app, 20, 25).await;
    assert_connections_within(&app, 40).await;
}

#[actix_web::test]
async fn tenants_stay_isolated_while_pools_are_evicted_under_the_connection_cap() {
    let app = spawn_with_pools(2, 4).await;
    concurrent_tenants_never_see_each_other(&app, 12, 8).await;
    assert_connections_within(&app, 4).await;
}

#[actix_web::test]
async fn many_tenants_share_four_connections_and_every_row_stays_with_its_tenant() {
    // Every request is another tenant's: connections are re-scoped all the time (one
    // database per tenant: closed and opened, being the only way to change database).
    const TENANTS: usize = {% if isolation == "database" %}40{% else %}200{% endif %};
    let app = spawn_with_pools(4, 4).await;
    many_tenants_take_turns(&app, TENANTS).await;
    let stats = app.tenancy.connection_stats().tenant;
    assert!(stats.open_connections <= 4, "{stats:?}");
{%- if isolation == "database" %}
    assert!(stats.evicted > 0, "{stats:?}");
{%- else %}
    // Never more than the four connections: tenants changed by re-scoping.
    assert!(stats.opened <= 4, "{stats:?}");
    assert!(stats.rescoped as usize >= TENANTS, "{stats:?}");
{%- endif %}
    assert_connections_within(&app, 4).await;
}

/// `count` tenants write two notes each, then read them, all at once: every answer holds
/// exactly the tenant's own two notes, and the owner finds them where they belong.
pub(crate) async fn many_tenants_take_turns(app: &TestApp, count: usize) {
    let names: Vec<String> = (0..count).map(|i| format!("share_{i:03}")).collect();
    let tenants = app.create_tenants(&names).await;
    let service = service!(app);
    let writes = tenants.iter().flat_map(|tenant| {
        let service = &service;
        (0..2).map(move |j| {
            async move {
                let name = tenant.identifier.as_str();
                let (status, body) = call!(service, post "/api/notes", tenant = name,
                    json = json!({"title": format!("{name}-{j}")}));
                assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
            }
            .boxed_local()
        })
    });
    join_all(writes).await;
    let reads = tenants.iter().map(|tenant| {
        let service = &service;
        async move {
            let name = tenant.identifier.as_str();
            let (status, body) = call!(service, get "/api/notes?limit=100", tenant = name);
            assert_eq!(status, StatusCode::OK, "{name}: {body}");
            let mut titles: Vec<&str> = body
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["title"].as_str().unwrap())
                .collect();
            titles.sort_unstable();
            assert_eq!(titles, [format!("{name}-0"), format!("{name}-1")], "{name}");
        }
        .boxed_local()
    });
    join_all(reads).await;
    // Where the rows are, as the owner sees them.
    for tenant in &tenants {
        assert_eq!(
            app.db.notes_of(tenant).await,
            Some(2),
            "{}",
            tenant.identifier
        );
    }
}

{%- if isolation != "database" %}

#[actix_web::test]
async fn a_tenant_comes_back_to_the_connection_it_used_so_each_backend_warms_few_tenants() {
    let app = spawn_with_pools(4, 4).await;
    let mut tenants = Vec::new();
    for i in 0..4 + 13 {
        tenants.push(app.create_tenant(&format!("warm_{i:02}")).await);
    }
    // Four connections open and idle, scoped to four tenants that take no further part.
    let (openers, tenants) = tenants.split_at(4);
    let held: Vec<_> = join_all(openers.iter().map(|t| app.tenancy.tenant_connection(t)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(held);
    assert_eq!(app.tenancy.connection_stats().tenant.idle_connections, 4);

    // One request at a time, every one another tenant's: a pool taking the least recently
    // used connection would move each of the 13 tenants to another backend every round.
    let mut first_round = Vec::new();
    for round in 0..3 {
        for (i, tenant) in tenants.iter().enumerate() {
            let mut conn = app.tenancy.tenant_connection(tenant).await.unwrap();
            let backend: Backend = diesel::sql_query("SELECT pg_backend_pid() AS pid")
                .get_result(&mut conn)
                .await
                .unwrap();
            if round == 0 {
                first_round.push(backend.pid);
            } else {
                assert_eq!(backend.pid, first_round[i], "{} moved", tenant.identifier);
            }
        }
    }
    // Spread over the connections, not all on one.
    let mut backends = first_round.clone();
    backends.sort_unstable();
    backends.dedup();
    assert!(backends.len() > 1, "{first_round:?}");
    assert_eq!(app.tenancy.connection_stats().tenant.opened, 4);
}

#[derive(diesel::QueryableByName)]
struct Backend {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}
{%- endif %}

/// What scopes a connection of `tenant`, asked of the connection itself.
async fn scope_via(app: &TestApp, tenant: &Tenant) -> String {
    let mut conn = app.tenancy.tenant_connection(tenant).await.unwrap();
    let scope: Scope = diesel::sql_query(SCOPE_SQL)
        .get_result(&mut conn)
        .await
        .unwrap();
    scope.scope
}

#[actix_web::test]
async fn a_checkout_cancelled_mid_flight_never_leaves_another_tenants_scope_behind() {
    cancelled_checkouts_leave_no_scope_behind(&spawn_with_pools(1, 1).await).await;
}

/// Checkouts of one tenant dropped mid-flight between checkouts of another, on an app
/// with one connection: each tenant always finds its own scope.
pub(crate) async fn cancelled_checkouts_leave_no_scope_behind(app: &TestApp) {
    let alpha = app.create_tenant("alpha").await;
    let beta = app.create_tenant("beta").await;
    let alpha_scope = scope_via(app, &alpha).await;
    let beta_scope = scope_via(app, &beta).await;
    assert_ne!(alpha_scope, beta_scope);
    // Its schema, its database or its id.
    assert!(alpha_scope.contains("alpha") || alpha_scope.contains(&alpha.id.to_string()));

    // The one connection carries alpha's scope; beta's checkout must change it and is
    // dropped after its first poll (the re-scope sent), sometimes once the answer is back
    // but before it was read.
    let mut cancelled = 0;
    for step in 0..40u64 {
        assert_eq!(scope_via(app, &alpha).await, alpha_scope);
        let mut checkout = Box::pin(app.tenancy.tenant_connection(&beta));
        match checkout.as_mut().now_or_never() {
            Some(conn) => drop(conn.unwrap()),
            None => {
                if step % 2 == 1 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                cancelled += 1;
            }
        }
        // Dropping it cancels whatever it was doing.
        drop(checkout);
        // Whatever state the cancelled checkout left, each tenant sees only its scope.
        assert_eq!(
            scope_via(app, &alpha).await,
            alpha_scope,
            "after step {step}"
        );
        assert_eq!(scope_via(app, &beta).await, beta_scope, "after step {step}");
    }
    assert!(cancelled > 0, "no checkout was cancelled");
    assert!(app.tenancy.connection_stats().tenant.open_connections <= 1);
}

/// A test app with routes that misbehave on purpose, built with the same middleware and
/// extractor as the real one.
macro_rules! probe_service {
    ($app:expr) => {
        tenant_routes!(
            $app,
            "/scope" => scope,
            "/sleep" => sleep,
            "/panic" => panic_with_connection,
            "/failed-transaction" => failed_transaction,
        )
    };
}

const SCOPE_SQL: &str = "SELECT current_database() || ' ' || current_setting('search_path') \
     || ' ' || coalesce(current_setting('app.tenant_id', true), '') AS scope";

#[derive(diesel::QueryableByName)]
struct Scope {
    #[diesel(sql_type = Text)]
    scope: String,
}

/// What scopes a connection, whatever the strategy: its database, its schema and its
/// tenant setting.
async fn scope(mut conn: TenantConnection) -> HttpResponse {
    let scope: Scope = diesel::sql_query(SCOPE_SQL)
        .get_result(&mut conn)
        .await
        .unwrap();
    HttpResponse::Ok().body(scope.scope)
}

async fn sleep(mut conn: TenantConnection) -> HttpResponse {
    diesel::sql_query("SELECT pg_sleep(2)")
        .execute(&mut conn)
        .await
        .unwrap();
    HttpResponse::Ok().finish()
}

async fn panic_with_connection(mut conn: TenantConnection) -> HttpResponse {
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .unwrap();
    panic!("handler panicked while holding a tenant connection");
}

async fn failed_transaction(mut conn: TenantConnection) -> HttpResponse {
    let result: Result<(), diesel::result::Error> = conn
        .transaction(async |c| {
            diesel::sql_query("SELECT 1 / 0").execute(c).await?;
            Ok(())
        })
        .await;
    assert!(result.is_err());
    HttpResponse::InternalServerError().finish()
}

/// The `search_path` a tenant connection of `$tenant` has.{% raw %}
macro_rules! scope_of {
    ($service:expr, $tenant:expr) => {{
        let response = test::call_service(&$service, get("/scope", $tenant).to_request()).await;
        assert_eq!(response.status(), StatusCode::OK);
        String::from_utf8(test::read_body(response).await.to_vec()).unwrap()
    }};
}{% endraw %}

fn get(path: &str, tenant: &str) -> test::TestRequest {
    crate::helpers::for_tenant(test::TestRequest::get(), path, tenant)
}

#[actix_web::test]
async fn with_one_connection_a_then_b_then_a_never_see_the_wrong_schema() {
    let app = spawn_with_pools(1, 1).await;
    app.create_tenant("alpha").await;
    app.create_tenant("beta").await;
    let service = service!(app);
    let (status, _) =
        call!(service, post "/api/notes", tenant = "alpha", json = json!({"title": "alpha note"}));
    assert_eq!(status, StatusCode::CREATED);
    for tenant in ["alpha", "beta", "alpha", "beta", "alpha"] {
        let (status, body) = call!(service, get "/api/notes", tenant = tenant);
        assert_eq!(status, StatusCode::OK);
        let expected = if tenant == "alpha" { 1 } else { 0 };
        assert_eq!(
            body.as_array().unwrap().len(),
            expected,
            "{tenant} saw {body}"
        );
    }
    assert!(app.tenancy.connection_stats().tenant.open_connections <= 1);
}

#[actix_web::test]
async fn cancelled_panicking_and_failed_requests_leave_no_scope_behind() {
    misbehaving_requests_leave_no_scope_behind(&spawn_with_pools(1, 1).await).await;
}

/// Requests cancelled mid-query, handlers that panic or whose transaction fails: none
/// leaves its scope to the next request.
pub(crate) async fn misbehaving_requests_leave_no_scope_behind(app: &TestApp) {
    app.create_tenant("alpha").await;
    app.create_tenant("beta").await;
    let service = probe_service!(app);
    let alpha = scope_of!(service, "alpha");
    let beta = scope_of!(service, "beta");
    assert_ne!(alpha, beta);

    // Cancelled mid-query: the client went away.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        test::call_service(&service, get("/sleep", "beta").to_request()),
    )
    .await;
    assert!(cancelled.is_err(), "the sleep should have been cancelled");
    assert_eq!(scope_of!(service, "alpha"), alpha);

    // A handler panics while holding the connection.
    let panicked = AssertUnwindSafe(test::call_service(
        &service,
        get("/panic", "beta").to_request(),
    ))
    .catch_unwind()
    .await;
    assert!(panicked.is_err(), "the handler should have panicked");
    assert_eq!(scope_of!(service, "alpha"), alpha);

    // A transaction fails inside a handler.
    let failed =
        test::call_service(&service, get("/failed-transaction", "beta").to_request()).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(scope_of!(service, "beta"), beta);
    assert_eq!(scope_of!(service, "alpha"), alpha);
}

#[actix_web::test]
async fn a_request_that_gets_no_connection_in_time_gets_503_with_retry_after() {
    let app = spawn_app_with(&[
        ("TENANCY_DATABASE_POOL_SIZE", "1"),
        ("TENANCY_DATABASE_MAX_OVERFLOW", "0"),
        ("TENANCY_MAX_TOTAL_CONNECTIONS", "1"),
        ("TENANCY_DATABASE_POOL_TIMEOUT", "1"),
    ])
    .await;
    let alpha = app.create_tenant("alpha").await;
    app.create_tenant("beta").await;
    // The only connection is busy with alpha: beta cannot get one and alpha's pool is
    // not idle, so it cannot be closed to make room.
    let busy = app.tenancy.tenant_connection(&alpha).await.unwrap();
    let service = service!(app);
    let request = get("/api/notes", "beta").to_request();
    let response = test::call_service(&service, request).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    let body: serde_json::Value = test::read_body_json(response).await;
    assert!(body.get("debug").is_none(), "{body}");
    drop(busy);
    let (status, _) = call!(service, get "/api/notes", tenant = "beta");
    assert_eq!(status, StatusCode::OK);
}

{%- unless isolation == "hybrid" %}

#[actix_web::test]
async fn a_tenant_stored_with_an_isolation_this_service_does_not_offer_is_never_served() {
    use svc::domain::{Isolation, TenantIdentifier};
    use svc::tenancy::registry;

    let app = spawn_app_with(&[]).await;
    // A registry shared with a service generated for another strategy.
    let foreign = Isolation::ALL
        .into_iter()
        .find(|i| *i != svc::tenancy::isolation::ISOLATION)
        .unwrap();
    let mut conn = app.tenancy.control.get().await.unwrap();
    let identifier = TenantIdentifier::parse("elsewhere").unwrap();
    registry::insert_or_get(
        &mut conn,
        &identifier,
        "Elsewhere",
        foreign,
        &json!({}),
        None,
    )
    .await
    .unwrap();
    drop(conn);
    app.db
        .query("UPDATE tenancy.tenants SET status = 'active' WHERE identifier = 'elsewhere'")
        .await;
    let service = service!(app);
    let (status, body) = call!(service, get "/api/notes", tenant = "elsewhere");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(app.tenancy.connection_stats().tenant.opened, 0);
}
{%- endunless %}
