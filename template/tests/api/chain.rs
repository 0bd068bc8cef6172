//! Chain resolution ({% for r in resolvers %}{% unless forloop.first %}, then {% endunless %}{{r}}{% endfor %}): each resolver alone
//! reaches its tenant; two resolvers naming different tenants get 403, never either
//! tenant; a rejected credential does not fall through to the next resolver.

use crate::helpers::spawn_app;
use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use serde_json::{Value, json};

const RESOLVERS: &[&str] = &[{% for r in resolvers %}"{{r}}"{% unless forloop.last %}, {% endunless %}{% endfor %}];

/// `GET /api/notes` naming a tenant with each of `names` (resolver, tenant).
fn request(names: &[(&str, &str)]) -> TestRequest {
    #[allow(unused_mut)]
    let mut path = "/api/notes".to_string();
    let mut request = TestRequest::get();
    for (resolver, tenant) in names {
        request = match *resolver {
{%- if header_resolver %}
            "header" => request.insert_header(("X-Tenant-ID", tenant.to_string())),
{%- endif %}
{%- if subdomain_resolver %}
            "subdomain" => request
                .insert_header(("Host", format!("{tenant}{}", crate::helpers::DOMAIN_SUFFIX))),
{%- endif %}
{%- if path_resolver %}
            "path" => {
                path = format!("/t/{tenant}{path}");
                request
            }
{%- endif %}
{%- if jwt_resolver %}
            "jwt" => request.insert_header((
                "Authorization",
                format!("Bearer {}", crate::helpers::token_for(tenant)),
            )),
{%- endif %}
            other => panic!("no resolver {other}"),
        };
    }
    request.uri(&path)
}

#[actix_web::test]
async fn each_resolver_alone_reaches_its_tenant_and_two_must_agree() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    let service = service!(app);
    let (status, _) =
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "a"}));
    assert_eq!(status, StatusCode::CREATED);

    let send = |names: Vec<(&'static str, &'static str)>| {
        let service = &service;
        async move {
            let response =
                actix_web::test::call_service(service, request(&names).to_request()).await;
            let status = response.status();
            let body: Value = serde_json::from_slice(&actix_web::test::read_body(response).await)
                .unwrap_or(Value::Null);
            (status, body)
        }
    };
    for resolver in RESOLVERS {
        let (status, body) = send(vec![(resolver, "acme")]).await;
        assert_eq!(status, StatusCode::OK, "{resolver}: {body}");
        assert_eq!(body.as_array().unwrap().len(), 1, "{resolver}: {body}");
        let (status, body) = send(vec![(resolver, "globex")]).await;
        assert_eq!(status, StatusCode::OK, "{resolver}: {body}");
        assert_eq!(body, json!([]), "{resolver}");
    }
    for first in RESOLVERS {
        for second in RESOLVERS.iter().filter(|r| *r != first) {
            let (status, body) = send(vec![(first, "acme"), (second, "acme")]).await;
            assert_eq!(status, StatusCode::OK, "{first}+{second}: {body}");
            let (status, body) = send(vec![(first, "acme"), (second, "globex")]).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{first}+{second}: {body}");
            assert!(body.get("detail").is_none(), "{body}");
        }
    }

    // Nothing named: 400, listing what could be sent.
    let (status, body) = send(vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = body["detail"].as_str().unwrap().to_owned();
    assert_eq!(
        detail.matches(", or ").count(),
        RESOLVERS.len() - 1,
        "{detail}"
    );
}
{%- if jwt_resolver %}

#[actix_web::test]
async fn a_rejected_token_never_falls_through_to_another_resolver() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let expired = crate::helpers::sign_hs256(
        json!({"tenant_id": "acme", "exp": crate::helpers::now() - 600}),
    );
    for other in RESOLVERS.iter().filter(|r| **r != "jwt") {
        let request = request(&[(other, "acme")])
            .insert_header(("Authorization", format!("Bearer {expired}")))
            .to_request();
        let response = actix_web::test::call_service(&service, request).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{other}");
        assert_eq!(
            response.headers().get("www-authenticate").unwrap(),
            "Bearer"
        );
    }
}
{%- endif %}
