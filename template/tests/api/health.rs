//! Health endpoints with a healthy and an unreachable database.

use std::collections::HashMap;

use crate::helpers::spawn_app;
use actix_web::http::StatusCode;
use actix_web::{test, web};

use svc::config::Settings;
use svc::tenancy::Tenancy;

#[actix_web::test]
async fn health_reports_database_latency_tenant_counts_and_connections() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    app.tenancy
        .suspend_tenant(&crate::helpers::operator(), &"globex".parse_identifier())
        .await
        .unwrap();
    let service = service!(app);
    let (status, body) = health!(service);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["checks"]["database"]["status"], "up");
    assert!(body["checks"]["database"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(body["tenants"]["total"], 2);
    assert_eq!(body["tenants"]["by_status"]["active"], 1);
    assert_eq!(body["tenants"]["by_status"]["suspended"], 1);
    assert_eq!(body["connections"]["tenant"]["max_connections"], 40);
    assert_eq!(body["connections"]["control"]["max_connections"], 4);
    assert!(body["connections"]["control"]["opened"].as_u64().unwrap() >= 1);
    assert!(body["connections"].get("degraded").is_none(), "{body}");
    // No other server listed: the default one, holding both tenants.
    assert_eq!(
        body["checks"]["servers"],
        serde_json::json!([{
            "server": "default",
            "status": "up",
            "latency_ms": body["checks"]["servers"][0]["latency_ms"],
            "tenants": 2,
        }])
    );
}

#[actix_web::test]
async fn health_checks_each_server_tenants_may_be_on_and_one_down_degrades_it() {
    // Listed: the second server, and two that do not resolve.
    let Some((app, other)) = crate::servers::spawn_with_other_server().await else {
        return;
    };
    (crate::servers::create_on(&app, "far", &other.address).await).unwrap();
    let service = service!(app);
    let (status, body) = health!(service);
    // The other servers' tenants are served: degraded, not unhealthy.
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
    let servers = body["checks"]["servers"].as_array().unwrap();
    let seen: Vec<(&str, &str, i64)> = servers
        .iter()
        .map(|s| {
            (
                s["server"].as_str().unwrap(),
                s["status"].as_str().unwrap(),
                s["tenants"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("default", "up", 0),
            (other.address.as_str(), "up", 1),
            ("elsewhere.invalid:5432", "down", 0),
            ("elsewhere.invalid", "down", 0),
        ]
    );
    // Why a server is down is an internal detail.
    assert!(servers.iter().all(|s| s.get("error").is_none()), "{body}");

    // The same in /metrics, server by server.
    let text = test::call_and_read_body(
        &service,
        test::TestRequest::get().uri("/metrics").to_request(),
    )
    .await;
    let text = String::from_utf8_lossy(&text);
    // `name{server="..."} value`, braces written apart.
    let line = |name: &str, server: &str, value: u8| {
        format!("{name}{}server=\"{server}\"{} {value}", '{', '}')
    };
    let up = "tenancy_database_server_up";
    for line in [
        line(up, "default", 1),
        line(up, &other.address, 1),
        line("tenancy_database_server_tenants", &other.address, 1),
        line(up, "elsewhere.invalid", 0),
        line(up, "elsewhere.invalid:5432", 0),
    ] {
        assert!(text.lines().any(|l| l == line), "no '{line}' in:\n{text}");
    }
}

#[actix_web::test]
async fn health_is_503_when_the_database_is_unreachable() {
    let mut env: HashMap<String, String> = crate::helpers::base_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.extend([
        // Nothing listens on port 1.
        (
            "TENANCY_DATABASE_URL".to_string(),
            "postgres://nobody:pw@127.0.0.1:1/none".to_string(),
        ),
        ("TENANCY_DATABASE_POOL_TIMEOUT".to_string(), "1".to_string()),
    ]);
    let (settings, _) = Settings::from_env_map(env).unwrap();
    let tenancy = web::Data::new(Tenancy::new(settings.tenancy.clone()).unwrap());
    let service = test::init_service(svc::startup::app(tenancy, &settings)).await;
    for (path, expected) in [
        ("/health", StatusCode::SERVICE_UNAVAILABLE),
        ("/health/ready", StatusCode::SERVICE_UNAVAILABLE),
        ("/health/live", StatusCode::OK),
    ] {
        let response =
            test::call_service(&service, test::TestRequest::get().uri(path).to_request()).await;
        assert_eq!(response.status(), expected, "{path}");
        let body = test::read_body(response).await;
        assert!(
            !String::from_utf8_lossy(&body).contains("pw@"),
            "{path} leaked the URL"
        );
    }
    // Tenant requests get 503 with Retry-After, not a hang or a 500.
    let request =
        crate::helpers::for_tenant(test::TestRequest::get(), "/api/notes", "acme").to_request();
    let response = test::call_service(&service, request).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
}

trait ParseIdentifier {
    fn parse_identifier(&self) -> svc::domain::TenantIdentifier;
}

impl ParseIdentifier for str {
    fn parse_identifier(&self) -> svc::domain::TenantIdentifier {
        svc::domain::TenantIdentifier::parse(self).unwrap()
    }
}
