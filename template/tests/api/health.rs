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
    let response = test::call_service(
        &service,
        test::TestRequest::get().uri("/health").to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = test::read_body_json(response).await;
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
