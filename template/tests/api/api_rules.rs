//! Rules a client can rely on across the API, each found by a fuzzer first: a method a
//! path lacks is a 405 problem; out-of-range query values and unknown JSON members are
//! refused; a body is a JSON object, its text as the document describes it; metadata
//! comes back as sent (what PostgreSQL cannot store is refused), and a registry row
//! written by hand that cannot be decoded blocks no other tenant; a request actix cannot
//! parse is counted, not logged as an error.

use actix_web::http::StatusCode;
use actix_web::test;
use serde_json::{Value, json};

use crate::helpers::*;
use svc::domain::TenantIdentifier;
use svc::tenancy::lifecycle::{LifecycleError, NewTenant, Touch};

/// `request`'s status, `Allow` header and JSON body; the body must be problem+json.
async fn problem<S, R, B>(service: &S, request: R) -> (StatusCode, String, Value)
where
    S: actix_web::dev::Service<
            R,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody,
{
    let response = test::call_service(service, request).await;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (allow, content_type) = (header("allow"), header("content-type"));
    let body: Value = serde_json::from_slice(&test::read_body(response).await).unwrap();
    assert_eq!(content_type, "application/problem+json", "{status} {body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    (status, allow, body)
}

#[actix_web::test]
async fn a_method_a_path_lacks_is_a_405_problem_naming_the_methods_it_has() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let mut cases = vec![
        (
            for_tenant(test::TestRequest::put(), "/api/notes", "acme"),
            "GET, POST",
        ),
        (test::TestRequest::post().uri("/health"), "GET"),
        (test::TestRequest::delete().uri("/health/ready"), "GET"),
        (test::TestRequest::post().uri("/metrics"), "GET"),
    ];
    cases.push((
        test::TestRequest::with_uri("/health").method(actix_web::http::Method::TRACE),
        "GET",
    ));
{%- if admin_api %}
    cases.push((
        test::TestRequest::put()
            .uri("/admin/tenants")
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}"))),
        "GET, POST",
    ));
    cases.push((
        test::TestRequest::get().uri("/admin/tenants/acme/suspend"),
        "POST",
    ));
{%- endif %}
    for (request, expected) in cases {
        let (status, allow, body) = problem(&service, request.to_request()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
        let mut allowed: Vec<&str> = allow.split(", ").collect();
        allowed.sort_unstable();
        assert_eq!(allowed.join(", "), expected, "{body}");
        assert_eq!(body["title"], "Method not allowed");
    }
    // A path that is not there at all stays a 404.
    let (status, _, _) = problem(
        &service,
        test::TestRequest::post().uri("/nowhere").to_request(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn out_of_range_queries_and_unknown_members_are_refused_not_bent() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let service = service!(app);
    for limit in ["0", "101", "-1"] {
        let path = format!("/api/notes?limit={limit}");
        let request = for_tenant(test::TestRequest::get(), &path, "acme");
        let (status, _, body) = problem(&service, request.to_request()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{limit}: {body}");
        assert_eq!(body["detail"], "limit must be 1 to 100");
    }
    let request = for_tenant(test::TestRequest::get(), "/api/notes?limit=100", "acme");
    let response = test::call_service(&service, request.to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);

    let unknown = json!({"title": "hello", "colour": "red"});
    let request = for_tenant(test::TestRequest::post(), "/api/notes", "acme").set_json(unknown);
    let (status, _, body) = problem(&service, request.to_request()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    assert_eq!(app.db.notes_of(&acme).await, Some(0));

    // Titles are stored trimmed; an id that cannot name a note is not found.
    let request = for_tenant(test::TestRequest::post(), "/api/notes", "acme")
        .set_json(json!({"title": "  padded  "}));
    let note: Value = test::call_and_read_body_json(&service, request.to_request()).await;
    assert_eq!(note["title"], "padded");
    let request = for_tenant(test::TestRequest::get(), "/api/notes/not-a-uuid", "acme");
    let (status, _, _) = problem(&service, request.to_request()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn a_body_is_a_json_object_and_its_text_is_what_the_document_says() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let service = service!(app);
    // serde's derive alone reads a struct from an array of its members.
    let mut refused = vec![
        (
            "/api/notes",
            json!(["title", "body"]),
            "expected a JSON object",
        ),
        (
            "/api/notes/import",
            json!({"notes": [["title", "body"]]}),
            "expected a JSON object",
        ),
        (
            "/api/notes",
            json!({"title": " \u{3000}\t"}),
            "not all white space",
        ),
        (
            "/api/notes",
            json!({"title": format!(" {} ", "x".repeat(199))}),
            "1 to 200 characters",
        ),
        (
            "/api/notes",
            json!({"title": "t", "body": "é".repeat(100_001)}),
            "at most 100000 characters",
        ),
    ];
    refused.push(("/api/notes", json!({"title": "t", "body": "\u{0}"}), "NUL"));
    for (path, body, why) in refused {
        let request = for_tenant(test::TestRequest::post(), path, "acme").set_json(&body);
        let (status, _, problem) = problem(&service, request.to_request()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{detail}");
    }
    assert_eq!(app.db.notes_of(&acme).await, Some(0));
    // Characters are counted, not bytes: 100,000 two-byte characters are a valid body.
    let body = "é".repeat(100_000);
    let request = for_tenant(test::TestRequest::post(), "/api/notes", "acme")
        .set_json(json!({"title": " x ", "body": body}));
    let response = test::call_service(&service, request.to_request()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
{%- if admin_api %}
    for (path, body) in [
        ("/admin/tenants/acme/limits", json!([null, null])),
        ("/admin/tenants/acme/maintenance", json!(["read_only"])),
        ("/admin/tenants", json!(["globex", "Globex"])),
    ] {
        let request = test::TestRequest::default()
            .method(if path == "/admin/tenants" {
                actix_web::http::Method::POST
            } else {
                actix_web::http::Method::PUT
            })
            .uri(path)
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .set_json(&body);
        let (status, _, problem) = problem(&service, request.to_request()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("expected a JSON object")
        );
    }
{%- endif %}
}

#[actix_web::test]
async fn metadata_comes_back_as_sent_and_a_row_written_by_hand_blocks_nothing() {
    let app = spawn_app().await;
    // jsonb keeps 1.7976931348623157e308 as its 309 digits; they read back the same.
    let mut new = NewTenant::new(TenantIdentifier::parse("initech").unwrap(), "Initech");
    let metadata = json!({"plan": "pro", "limits": [1, f64::MAX, f64::MIN, 5e-324]});
    new.metadata = metadata.clone();
    app.tenancy.create_tenant(&operator(), new).await.unwrap();
    let initech = TenantIdentifier::parse("initech").unwrap();
    let stored = app.tenancy.get_tenant(&initech).await.unwrap();
    assert_eq!(stored.metadata, metadata);
    // What jsonb cannot store (a NUL character) is refused, naming the member.
    let mut new = NewTenant::new(TenantIdentifier::parse("umbrella").unwrap(), "Umbrella");
    new.metadata = json!({"notes": ["fine", "a\u{0}b"]});
    match app.tenancy.create_tenant(&operator(), new).await {
        Err(LifecycleError::Invalid(message)) => assert_eq!(
            message,
            "metadata.notes[1] may not contain the NUL character (U+0000)"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(app.tenancy.list_tenants().await.unwrap().len(), 1);

    // A row fixed up by hand in SQL, with a number no double holds, among good ones.
    let acme = app.create_tenant("acme").await;
    let globex = app.create_tenant("globex").await;
    app.db
        .query(
            "UPDATE tenancy.tenants SET metadata = '{\"x\": 1e400}' \
             WHERE identifier = 'acme'",
        )
        .await;
    let listed = app.tenancy.list_tenants().await.unwrap();
    assert_eq!(listed.len(), 3);
    let by_name = |name: &str| {
        listed
            .iter()
            .find(|t| t.identifier.as_str() == name)
            .unwrap()
    };
    assert!(by_name("acme").metadata_undecodable());
    assert!(!by_name("globex").metadata_undecodable());
    let shown = app.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert!(shown.metadata.is_null());

    // Both tenants are served; /health names the trouble.
    let service = service!(app);
    for tenant in [&acme, &globex] {
        let request = for_tenant(
            test::TestRequest::get(),
            "/api/notes",
            tenant.identifier.as_str(),
        );
        let response = test::call_service(&service, request.to_request()).await;
        assert_eq!(response.status(), StatusCode::OK, "{}", tenant.identifier);
    }
    let health: Value = test::call_and_read_body_json(
        &service,
        test::TestRequest::get().uri("/health").to_request(),
    )
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["tenants"]["undecodable"], 1, "{health}");

    // Migrations still reach every tenant; the command line marks the row.
    let report = app
        .tenancy
        .migrate_all(&operator(), 2, Touch::Every, |_| {})
        .await
        .unwrap();
    assert_eq!(report.tenants, 3);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let out = std::process::Command::new(binary())
        .args(["tenant", "list"])
        .env_clear()
        .envs(app.db.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|line| line.contains(" acme ")).unwrap();
    assert!(
        line.ends_with("(metadata cannot be decoded: fix it in SQL)"),
        "{stdout}"
    );

    // Fixed by hand: decoded again, and /health is back to healthy.
    app.db
        .query("UPDATE tenancy.tenants SET metadata = '{}' WHERE identifier = 'acme'")
        .await;
    app.tenancy.list_tenants().await.unwrap();
    assert_eq!(app.tenancy.undecodable_tenants(), 0);
}
{%- if admin_api %}

#[actix_web::test]
async fn the_admin_api_refuses_metadata_postgresql_cannot_store_with_a_400_naming_it() {
    let app = spawn_app().await;
    let service = service!(app);
    let request = test::TestRequest::post()
        .uri("/admin/tenants")
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .set_json(json!({"identifier": "acme", "name": "Acme", "metadata": {"\u{0}x": 1}}));
    let (status, _, body) = problem(&service, request.to_request()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["detail"],
        "a key in metadata may not contain the NUL character (U+0000)"
    );
    // The refusal is in the audit trail, the NUL recorded as U+FFFD.
    let recorded = app
        .db
        .query(
            "SELECT result, params->>'metadata_keys' FROM tenancy.audit \
             WHERE identifier = 'acme' AND operation = 'create'",
        )
        .await;
    assert_eq!(
        recorded,
        vec![vec![
            Some("refused".to_owned()),
            Some("[\"\u{FFFD}x\"]".to_owned())
        ]]
    );
    // Nothing was left behind: no tenant, and the list reads.
    let request = test::TestRequest::get()
        .uri("/admin/tenants")
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")));
    let listed: Value = test::call_and_read_body_json(&service, request.to_request()).await;
    assert_eq!(listed, json!([]));
}
{%- endif %}

#[actix_web::test]
async fn a_request_actix_cannot_parse_is_counted_and_answered_400() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let port = serve(&app);
    let before = svc::telemetry::malformed_requests();
    // A control character in a header value: refused by the HTTP parser itself.
    let request = "GET /api/notes HTTP/1.1\r\nHost: localhost\r\nX-Tenant-ID: ac\u{1}me\r\n\r\n";
    // Off this thread: the server's start runs on it.
    let answer = actix_web::rt::task::spawn_blocking(move || send(port, request))
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(svc::telemetry::malformed_requests() > before);
    let service = service!(app);
    let scrape = scrape(
        &service,
        test::TestRequest::get().uri("/metrics").to_request(),
    )
    .await;
    assert!(value(&scrape, "http_malformed_requests_total", &[]) >= 1.0);
}
