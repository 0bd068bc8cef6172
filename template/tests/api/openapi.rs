//! The API document is the API: every route is described with exactly the methods it
//! answers, `GET /openapi.json` serves what the code builds, and the committed
//! `openapi.json` is that document (a change to the API shows in review as a change to
//! it). A project without `openapi.json` yet gets it written by the first run.

use std::collections::BTreeSet;

use actix_web::http::{Method, StatusCode};
use actix_web::test;
use serde_json::Value;

use crate::helpers::*;
{%- if admin_api %}

/// The request members that name a server.
const SERVER_FIELDS: &[(&str, &str)] = &[("NewTenant", "server"), ("MoveTo", "to")];
{%- endif %}

/// The document as the code builds it.
fn built() -> Value {
    serde_json::from_str(&svc::openapi::json()).unwrap()
}

#[actix_web::test]
async fn the_served_document_is_the_built_one_and_the_committed_one() {
    let app = spawn_app().await;
    let service = service!(app);
    let response = test::call_service(
        &service,
        test::TestRequest::get().uri("/openapi.json").to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let {% if admin_api %}mut {% endif %}served: Value = test::read_body_json(response).await;
{%- if admin_api %}
    // The servers a request may name are this deployment's: none listed here, null alone.
    for &(component, field) in SERVER_FIELDS {
        let property = &mut served["components"]["schemas"][component]["properties"][field];
        assert_eq!(
            property["enum"],
            serde_json::json!([null]),
            "{component}.{field}"
        );
        *property = built()["components"]["schemas"][component]["properties"][field].clone();
    }
{%- endif %}
    assert_eq!(served, built());
    assert_eq!(served["openapi"], "3.1.0");

    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let current = format!("{}\n", svc::openapi::json());
    match std::fs::read_to_string(&committed) {
        Ok(text) => assert!(
            text == current,
            "openapi.json is not what the code describes: review the change, then \
             `cargo run -- openapi > openapi.json` and commit it"
        ),
        Err(_) => {
            std::fs::write(&committed, current).unwrap();
            eprintln!("wrote {}: commit it", committed.display());
        }
    }
}
{%- if admin_api %}

#[actix_web::test]
async fn the_served_document_names_the_listed_servers_and_no_other() {
    let app = spawn_app_with(&[("TENANCY_DATABASE_SERVERS", "db2.internal:5432,db3")]).await;
    let service = service!(app);
    let served: Value = test::call_and_read_body_json(
        &service,
        test::TestRequest::get().uri("/openapi.json").to_request(),
    )
    .await;
    for &(component, field) in SERVER_FIELDS {
        let property = &served["components"]["schemas"][component]["properties"][field];
        assert_eq!(
            property["enum"],
            serde_json::json!(["db2.internal:5432", "db3", null]),
            "{component}.{field}"
        );
        assert!(property.get("pattern").is_none(), "{property}");
    }
}
{%- endif %}

#[actix_web::test]
async fn text_members_are_described_as_the_server_checks_them() {
    // Schema attributes take only literals: each repeats the pattern of the check.
    let doc = built();
    let mut described = vec![
        ("NoteInput", "title", svc::domain::VISIBLE_PATTERN),
        ("NoteInput", "body", svc::domain::TEXT_PATTERN),
    ];
    if doc["components"]["schemas"].get("NewTenant").is_some() {
        described.push(("NewTenant", "name", svc::domain::VISIBLE_PATTERN));
    }
    for (schema, member, pattern) in described {
        let property = &doc["components"]["schemas"][schema]["properties"][member];
        assert_eq!(property["pattern"], pattern, "{schema}.{member}");
    }
}

#[actix_web::test]
async fn every_route_is_registered_as_a_described_resource() {
    // Routes are resources (`web::resource`), so that a method a path lacks is answered
    // 405 and the methods here are all it has; a `.route("…")` on a scope or config
    // would make a resource of its own, outside this count.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![root.join("startup.rs")];
    for entry in std::fs::read_dir(root.join("routes")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut resources = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        resources += text.matches("web::resource(").count();
        assert!(
            !text.contains(".route(\""),
            "{}: register routes with web::resource(...)",
            file.display()
        );
    }
    let described = built()["paths"].as_object().unwrap().len();
    assert_eq!(
        resources, described,
        "every web::resource needs its #[utoipa::path] (listed in src/openapi.rs)"
    );
}

#[actix_web::test]
async fn every_described_path_answers_exactly_its_described_methods() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let document = built();
    let all = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    for (template, item) in document["paths"].as_object().unwrap() {
        let described: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|key| all.iter().any(|m| m.as_str().eq_ignore_ascii_case(key)))
            .map(|key| key.to_uppercase())
            .collect();
        // Any value will do for the ids: the method is checked before they are read. Admin
        // requests carry no token: a described method is refused (401), never carried out.
        let path = template
            .replace("/t/{tenant}", "")
            .replace("{identifier}", "acme")
            .replace("{id}", "1");
        for method in &all {
            let request = test::TestRequest::default().method(method.clone());
            let request = if path.starts_with("/api/") {
                for_tenant(request, &path, "acme")
            } else {
                request.uri(&path)
            };
            let response = test::call_service(&service, request.to_request()).await;
            let status = response.status();
            if described.contains(method.as_str()) {
                // Answered by its handler (a 404 may be the id's: none is created here).
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template}"
                );
                let allow = response.headers().get("allow").unwrap().to_str().unwrap();
                let allowed: BTreeSet<String> = allow.split(", ").map(str::to_owned).collect();
                assert_eq!(allowed, described, "{template}: Allow {allow}");
            }
        }
    }
}

#[actix_web::test]
async fn the_documentation_page_is_off_by_default_and_self_contained_when_on() {
    let app = spawn_app().await;
    let service = service!(app);
    for path in ["/docs", "/docs/rapidoc-min.js"] {
        let response =
            test::call_service(&service, test::TestRequest::get().uri(path).to_request()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }

    let app = spawn_app_with(&[("TENANCY_API_DOCS", "true")]).await;
    let service = service!(app);
    let response =
        test::call_service(&service, test::TestRequest::get().uri("/docs").to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let policy = response
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'self';"),
        "{policy}"
    );
    assert!(!policy.contains("http"), "{policy}");
    let page = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
    // Everything the page loads is this service's: no address names another host.
    assert!(page.contains(r#"spec-url="/openapi.json""#), "{page}");
    assert!(page.contains(r#"src="/docs/rapidoc-min.js""#), "{page}");
    assert!(!page.contains("://"), "{page}");

    let response = test::call_service(
        &service,
        test::TestRequest::get()
            .uri("/docs/rapidoc-min.js")
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("content-encoding").unwrap(), "gzip");
    let script = test::read_body(response).await;
    // A gzip stream (RFC 1952 magic), as large as the vendored file.
    assert_eq!(script[..2], [0x1f, 0x8b]);
    let vendored = std::fs::metadata(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/rapidoc-min.js.gz"),
    )
    .unwrap();
    assert_eq!(script.len() as u64, vendored.len());
}
{%- if header_resolver or resolution == "path" %}

#[actix_web::test]
async fn the_served_document_names_the_tenant_as_the_service_is_configured() {
{%- if resolution == "path" %}
    let app = spawn_app_with(&[("TENANCY_PATH_PREFIX", "/orgs")]).await;
{%- else %}
    let app = spawn_app_with(&[("TENANCY_TENANT_HEADER", "X-Org")]).await;
{%- endif %}
    let service = service!(app);
    let served: Value = test::call_and_read_body_json(
        &service,
        test::TestRequest::get().uri("/openapi.json").to_request(),
    )
    .await;
    let text = served.to_string();
{%- if header_resolver %}
    assert!(text.contains(r#""name":"X-Org""#), "{text}");
    assert!(!text.contains("X-Tenant-ID"), "{text}");
{%- endif %}
{%- if resolution == "path" %}
    assert!(
        served["paths"]["/orgs/{tenant}/api/notes"].is_object(),
        "{text}"
    );
    assert!(!text.contains("/t/{tenant}"), "{text}");
{%- endif %}
}
{%- endif %}
