//! Subdomain resolution through the HTTP app: every kind of Host, table-driven.

use crate::helpers::{spawn_app, spawn_app_with};
use actix_web::http::StatusCode;
use actix_web::test;

#[actix_web::test]
async fn hosts_resolve_deliberately() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let cases: &[(&str, StatusCode)] = &[
        ("acme.example.test", StatusCode::OK),
        ("acme.example.test:8443", StatusCode::OK),
        ("ACME.Example.TEST", StatusCode::OK),
        ("acme.example.test.", StatusCode::OK),
        ("example.test", StatusCode::BAD_REQUEST),
        ("ghost.example.test", StatusCode::NOT_FOUND),
        ("acme.example.org", StatusCode::BAD_REQUEST),
        ("a.acme.example.test", StatusCode::NOT_FOUND),
        ("127.0.0.1:8000", StatusCode::BAD_REQUEST),
        ("[::1]:8000", StatusCode::BAD_REQUEST),
        ("xn--acme-9qa.example.test", StatusCode::NOT_FOUND),
    ];
    for (host, expected) in cases {
        let request = test::TestRequest::get()
            .uri("/api/notes")
            .insert_header(("Host", *host))
            .to_request();
        let response = test::call_service(&service, request).await;
        assert_eq!(response.status(), *expected, "{host}");
    }
}

#[actix_web::test]
async fn x_forwarded_host_counts_only_when_trusted() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    let forwarded = || {
        test::TestRequest::get()
            .uri("/api/notes")
            .insert_header(("Host", "acme.example.test"))
            .insert_header(("X-Forwarded-Host", "globex.example.test"))
    };
    let service = service!(app);
    let (status, body) = call!(service, post "/api/notes", tenant = "globex", json = serde_json::json!({"title": "globex only"}));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Untrusted: the Host header decides (acme has no notes).
    let body: serde_json::Value =
        test::call_and_read_body_json(&service, forwarded().to_request()).await;
    assert_eq!(body, serde_json::json!([]));

    let trusted = spawn_app_with(&[("TENANCY_TRUST_FORWARDED_HOST", "true")]).await;
    trusted.create_tenant("acme").await;
    trusted.create_tenant("globex").await;
    let service = service!(trusted);
    let (status, _) = call!(service, post "/api/notes", tenant = "globex", json = serde_json::json!({"title": "globex only"}));
    assert_eq!(status, StatusCode::CREATED);
    let body: serde_json::Value =
        test::call_and_read_body_json(&service, forwarded().to_request()).await;
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
}

#[actix_web::test]
async fn an_absolute_form_uri_names_the_tenant_and_a_forwarded_host_its_last_value() {
    let app = spawn_app_with(&[("TENANCY_TRUST_FORWARDED_HOST", "true")]).await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    let service = service!(app);
    let (status, _) = call!(service, post "/api/notes", tenant = "globex", json = serde_json::json!({"title": "globex only"}));
    assert_eq!(status, StatusCode::CREATED);
    let notes_of = |request: test::TestRequest| {
        let service = &service;
        async move {
            let body: serde_json::Value =
                test::call_and_read_body_json(service, request.to_request()).await;
            body.as_array().unwrap().len()
        }
    };
    // RFC 9112: the URI's authority, not Host, names the target.
    let absolute = |uri: &str, host: &str| {
        test::TestRequest::get()
            .uri(uri)
            .insert_header(("Host", host.to_owned()))
    };
    assert_eq!(
        notes_of(absolute(
            "http://globex.example.test/api/notes",
            "acme.example.test"
        ))
        .await,
        1
    );
    assert_eq!(
        notes_of(absolute(
            "http://acme.example.test:8080/api/notes",
            "globex.example.test"
        ))
        .await,
        0
    );
    // A proxy that appends: the client's own value comes first, the proxy's last.
    let appended = test::TestRequest::get()
        .uri("/api/notes")
        .insert_header(("Host", "internal"))
        .insert_header(("X-Forwarded-Host", "globex.example.test, acme.example.test"));
    assert_eq!(notes_of(appended).await, 0);
    let two_headers = test::TestRequest::get()
        .uri("/api/notes")
        .insert_header(("Host", "internal"))
        .append_header(("X-Forwarded-Host", "globex.example.test"))
        .append_header(("X-Forwarded-Host", "acme.example.test"));
    assert_eq!(notes_of(two_headers).await, 0);
}
