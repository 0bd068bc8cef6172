//! How the middleware answers requests for missing, unknown, malformed and inactive
//! tenants, and which routes need one.

use crate::helpers::{spawn_app, spawn_app_with, without_request_id};
use actix_web::http::StatusCode;
use actix_web::test;

#[actix_web::test]
async fn a_request_that_names_no_tenant_gets_400_problem_json() {
    let app = spawn_app().await;
    let service = service!(app);
    let response = test::call_service(
        &service,
        test::TestRequest::get().uri("/api/notes").to_request(),
    )
    .await;
    let status = crate::helpers::no_tenant_status();
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    let challenge = response.headers().get("www-authenticate").cloned();
    let body: serde_json::Value = test::read_body_json(response).await;
    assert_eq!(body["status"], status);
    if status == 401 {
        // A token is the only way in: the challenge says so, the body says nothing more.
        assert_eq!(challenge.unwrap(), "Bearer");
        assert!(body.get("detail").is_none(), "{body}");
    } else {
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(crate::helpers::no_tenant_hint()), "{body}");
    }
}

#[actix_web::test]
async fn unknown_and_malformed_tenants_get_the_same_404() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let service = service!(app);
    let (status, unknown) = call!(service, get "/api/notes", tenant = "nosuchtenant");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let too_long = "a".repeat(64);
    for malformed in ["1abc", "a-b", "_x", too_long.as_str(), "a%22b"] {
        let request = crate::helpers::for_tenant(test::TestRequest::get(), "/api/notes", malformed)
            .to_request();
        let response = test::call_service(&service, request).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{malformed:?}");
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(
            without_request_id(body),
            without_request_id(unknown.clone()),
            "{malformed:?} is distinguishable from an unknown tenant"
        );
    }
    // Nothing was created for any of them.
    assert_eq!(app.db.notes_of(&acme).await, Some(0));
    assert_eq!(
        app.db.query("SELECT identifier FROM tenancy.tenants").await,
        vec![vec![Some("acme".to_string())]]
    );
}

#[actix_web::test]
async fn suspended_tenant_gets_403_and_is_served_again_after_activation() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let service = service!(app);
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    app.tenancy
        .suspend_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    let (status, body) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.get("debug").is_none(), "internals leaked: {body}");
    app.tenancy
        .activate_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn only_routes_under_api_need_a_tenant() {
    let app = spawn_app().await;
    let service = service!(app);
    let status_of = |path: &'static str| {
        let service = &service;
        async move {
            let request = test::TestRequest::get().uri(path).to_request();
            test::call_service(service, request).await.status()
        }
    };
    for path in ["/health", "/health/live", "/health/ready"] {
        assert_eq!(status_of(path).await, StatusCode::OK, "{path}");
    }
{%- if admin_api %}
    // The admin API asks for its token, never for a tenant.
    assert_eq!(status_of("/admin/tenants").await, StatusCode::UNAUTHORIZED);
{%- endif %}
    // Everything under /api needs one, a route that does not exist included.
    for path in ["/api/notes", "/api/nothing-here"] {
        assert_eq!(
            status_of(path).await.as_u16(),
            crate::helpers::no_tenant_status(),
            "{path}"
        );
    }
    assert_eq!(status_of("/nothing-here").await, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn error_details_add_internal_detail_only_when_enabled() {
    let quiet = spawn_app().await;
    let service = service!(quiet);
    let (_, body) = call!(service, get "/api/notes", tenant = "ghost");
    assert!(body.get("debug").is_none(), "{body}");

    let verbose = spawn_app_with(&[("TENANCY_ERROR_DETAILS", "true")]).await;
    let service = service!(verbose);
    let (status, body) = call!(service, get "/api/notes", tenant = "ghost");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["debug"].as_str().unwrap().contains("ghost"), "{body}");
}

#[actix_web::test]
async fn bad_input_gets_problem_json_and_changes_nothing() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, body) =
        call!(service, post "/api/notes", tenant = "acme", json = serde_json::json!({"title": ""}));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) =
        call!(service, post "/api/notes", tenant = "acme", json = serde_json::json!({"nope": 1}));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call!(service, get "/api/notes/not-a-number", tenant = "acme");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call!(service, get "/api/notes/12345", tenant = "acme");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(list, serde_json::json!([]));
}

#[actix_web::test]
async fn notes_crud_round_trip() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, created) = call!(service, post "/api/notes", tenant = "acme", json = serde_json::json!({"title": "first", "body": "hello"}));
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/api/notes/{}", created["id"].as_str().unwrap());
    let (status, updated) = call!(
        service,
        put & path,
        tenant = "acme",
        json = serde_json::json!({"title": "renamed"})
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["title"], "renamed");
    let (status, fetched) = call!(service, get & path, tenant = "acme");
    assert_eq!(
        (status, fetched["title"].clone()),
        (StatusCode::OK, "renamed".into())
    );
    let (status, _) = call!(service, delete & path, tenant = "acme");
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call!(service, get & path, tenant = "acme");
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn a_flood_of_unknown_identifiers_reads_the_registry_a_bounded_number_of_times() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let before = app.tenancy.cache_stats();
    let started = std::time::Instant::now();
    for i in 0..500 {
        let (status, _) = call!(service, get "/api/notes", tenant = &format!("ghost{i}"));
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let after = app.tenancy.cache_stats();
    // One read of the registered identifiers per 5 s at most, and one read of acme.
    let periods = started.elapsed().as_secs() / 5 + 1;
    assert!(
        after.identifier_reads - before.identifier_reads <= periods,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.lookups - before.lookups <= 1,
        "{before:?} -> {after:?}"
    );
}

#[actix_web::test]
async fn known_tenants_cost_one_registry_read_each_even_when_asked_at_once() {
    let app = spawn_app().await;
    let mut tenants = Vec::new();
    for i in 0..10 {
        tenants.push(app.create_tenant(&format!("busy{i}")).await);
    }
    let before = app.tenancy.cache_stats();
    // 100 concurrent first requests for one tenant: one read.
    let first = futures_util::future::join_all(
        (0..100).map(|_| app.tenancy.active_tenant(&tenants[0].identifier)),
    )
    .await;
    assert!(first.iter().all(Result::is_ok));
    // 1,000 requests over the 10 tenants: one read each.
    let service = service!(app);
    for i in 0..1000 {
        let tenant = tenants[i % 10].identifier.as_str();
        let (status, _) = call!(service, get "/api/notes", tenant = tenant);
        assert_eq!(status, StatusCode::OK);
    }
    let after = app.tenancy.cache_stats();
    assert_eq!(
        after.lookups - before.lookups,
        10,
        "{before:?} -> {after:?}"
    );
}
