//! Header resolution: what only the `X-Tenant-ID` resolver does.

use crate::helpers::{spawn_app, spawn_app_with, without_request_id};
use actix_web::http::StatusCode;
use actix_web::test;

#[actix_web::test]
async fn header_values_that_are_not_identifiers_get_the_unknown_tenant_404() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (_, unknown) = call!(service, get "/api/notes", tenant = "nosuchtenant");
    let too_long = "a".repeat(64);
    for value in [
        "Acme",
        "ACME",
        "a\"; drop schema public; --",
        "ac\u{e9}me",
        too_long.as_str(),
        "",
    ] {
        let request = test::TestRequest::get()
            .uri("/api/notes")
            .insert_header(("X-Tenant-ID", value.as_bytes().to_vec()))
            .to_request();
        let response = test::call_service(&service, request).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{value:?}");
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(
            without_request_id(body),
            without_request_id(unknown.clone()),
            "{value:?}"
        );
    }
}

#[actix_web::test]
async fn the_header_name_is_configurable() {
    let app = spawn_app_with(&[("TENANCY_TENANT_HEADER", "X-Org")]).await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let request = test::TestRequest::get()
        .uri("/api/notes")
        .insert_header(("X-Org", "acme"))
        .to_request();
    assert_eq!(
        test::call_service(&service, request).await.status(),
        StatusCode::OK
    );
    let request = test::TestRequest::get()
        .uri("/api/notes")
        .insert_header(("X-Tenant-ID", "acme"))
        .to_request();
    assert_eq!(
        test::call_service(&service, request).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[actix_web::test]
async fn a_tenant_header_sent_twice_is_refused_whichever_comes_first() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    let service = service!(app);
    let (status, _) = call!(service, post "/api/notes", tenant = "globex", json = serde_json::json!({"title": "globex only"}));
    assert_eq!(status, StatusCode::CREATED);
    // A proxy that appends its header to the client's must not let either one win.
    for (first, second) in [("acme", "globex"), ("globex", "acme"), ("acme", "acme")] {
        let request = test::TestRequest::get()
            .uri("/api/notes")
            .append_header(("X-Tenant-ID", first))
            .append_header(("X-Tenant-ID", second))
            .to_request();
        let response = test::call_service(&service, request).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{first}, {second}"
        );
        let body = test::read_body(response).await;
        assert!(
            !String::from_utf8_lossy(&body).contains("globex only"),
            "{first}, {second}"
        );
    }
}
