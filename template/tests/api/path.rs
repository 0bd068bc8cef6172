//! Path resolution through the HTTP app: the prefix is stripped before routing, and no
//! encoding trick changes the tenant.

use crate::helpers::spawn_app;
use actix_web::http::StatusCode;
use actix_web::test;
use serde_json::json;

#[actix_web::test]
async fn paths_resolve_deliberately() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    let service = service!(app);
    let (status, _) = call!(service, post "/api/notes", tenant = "globex", json = json!({"title": "globex only"}));
    assert_eq!(status, StatusCode::CREATED);
    let cases: &[(&str, StatusCode)] = &[
        ("/t/acme/api/notes", StatusCode::OK),
        ("/t/acme/api/notes?limit=5", StatusCode::OK),
        ("/api/notes", StatusCode::BAD_REQUEST),
        ("/t/ghost/api/notes", StatusCode::NOT_FOUND),
        ("/t/Acme/api/notes", StatusCode::NOT_FOUND),
        ("/t/acme%2Fglobex/api/notes", StatusCode::NOT_FOUND),
        ("/t/%61cme/api/notes", StatusCode::NOT_FOUND),
        ("/t/../api/notes", StatusCode::NOT_FOUND),
        ("/t/acme/../globex/api/notes", StatusCode::NOT_FOUND),
        ("/t/acme/%2E%2E/globex/api/notes", StatusCode::NOT_FOUND),
        ("/t/acme/t/globex/api/notes", StatusCode::NOT_FOUND),
    ];
    for (path, expected) in cases {
        let request = test::TestRequest::get().uri(path).to_request();
        let response = test::call_service(&service, request).await;
        let status = response.status();
        let body = test::read_body(response).await;
        assert_eq!(status, *expected, "{path}");
        assert!(
            !String::from_utf8_lossy(&body).contains("globex only"),
            "{path} reached globex"
        );
    }
}

#[actix_web::test]
async fn routes_are_written_once_without_the_prefix() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, created) =
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "x"}));
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/t/acme/api/notes/{}", created["id"].as_str().unwrap());
    let response =
        test::call_service(&service, test::TestRequest::get().uri(&path).to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Health stays outside the prefix.
    let response = test::call_service(
        &service,
        test::TestRequest::get().uri("/health/live").to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}
