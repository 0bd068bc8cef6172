//! Hybrid isolation: tenants of all three tiers, served at once by one process, each
//! isolated.

use crate::helpers::{TestApp, spawn_app};
use actix_web::http::StatusCode;
use futures_util::FutureExt;
use futures_util::future::join_all;
use serde_json::json;

use svc::domain::{Isolation, Tenant, TenantIdentifier};
use svc::tenancy::lifecycle::NewTenant;

async fn create(app: &TestApp, name: &str, isolation: Isolation) -> Tenant {
    app.tenancy
        .create_tenant(
            &crate::helpers::operator(),
            NewTenant {
                isolation: Some(isolation),
                ..NewTenant::new(TenantIdentifier::parse(name).unwrap(), name)
            },
        )
        .await
        .unwrap()
}

#[actix_web::test]
async fn tenants_of_every_tier_are_served_at_once_and_stay_isolated() {
    let app = spawn_app().await;
    let mut tenants = Vec::new();
    for i in 0..4 {
        tenants.push(create(&app, &format!("premium_{i}"), Isolation::Schema).await);
        tenants.push(create(&app, &format!("shared_{i}"), Isolation::Rls).await);
        tenants.push(create(&app, &format!("own_{i}"), Isolation::Database).await);
    }
    let service = service!(app);
    let mut requests = Vec::new();
    for tenant in &tenants {
        let name = tenant.identifier.to_string();
        for j in 0..10 {
            let (service, name) = (&service, name.clone());
            requests.push(
                async move {
                    let (status, _) = call!(service, post "/api/notes", tenant = name.as_str(),
                        json = json!({"title": format!("{name}-{j}")}));
                    assert_eq!(status, StatusCode::CREATED);
                    let (status, body) =
                        call!(service, get "/api/notes?limit=100", tenant = name.as_str());
                    assert_eq!(status, StatusCode::OK);
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
    for tenant in &tenants {
        assert_eq!(
            app.db.notes_of(tenant).await,
            Some(10),
            "{}",
            tenant.identifier
        );
    }
    // Premium tenants have schemas, the largest databases; the long tail has neither.
    let schemas = app.db.schemas().await;
    assert!(schemas.contains(&"tenant_premium_0".to_string()));
    assert!(!schemas.contains(&"tenant_shared_0".to_string()));
    assert!(!schemas.contains(&"tenant_own_0".to_string()));
    let databases = app
        .db
        .query(&format!(
            "SELECT datname FROM pg_database WHERE starts_with(datname, '{}') ORDER BY 1",
            app.db.tenant_database_prefix
        ))
        .await;
    let own: Vec<String> = (0..4)
        .map(|i| format!("{}own_{i}", app.db.tenant_database_prefix))
        .collect();
    assert_eq!(
        databases
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect::<Vec<_>>(),
        own
    );
}
{%- if admin_api %}

#[actix_web::test]
async fn the_tier_comes_from_the_request_or_the_configured_default() {
    let app = crate::helpers::spawn_app_with(&[("TENANCY_DEFAULT_ISOLATION", "schema")]).await;
    let service = service!(app);
    let admin = |body: serde_json::Value| {
        actix_web::test::TestRequest::post()
            .uri("/admin/tenants")
            .insert_header((
                "Authorization",
                format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
            ))
            .set_json(body)
            .to_request()
    };
    let defaulted: serde_json::Value = actix_web::test::call_and_read_body_json(
        &service,
        admin(json!({"identifier": "plain", "name": "Plain"})),
    )
    .await;
    assert_eq!(defaulted["isolation"], "schema");
    let chosen: serde_json::Value = actix_web::test::call_and_read_body_json(
        &service,
        admin(json!({"identifier": "small", "name": "Small", "isolation": "rls"})),
    )
    .await;
    assert_eq!(chosen["isolation"], "rls");
    let own: serde_json::Value = actix_web::test::call_and_read_body_json(
        &service,
        admin(json!({"identifier": "big", "name": "Big", "isolation": "database"})),
    )
    .await;
    assert_eq!(own["isolation"], "database");
    // A server is for a tenant with a database of its own.
    let misplaced = actix_web::test::call_service(
        &service,
        admin(
            json!({"identifier": "tiny", "name": "Tiny", "isolation": "rls",
            "server": "elsewhere.invalid"}),
        ),
    )
    .await;
    assert_eq!(misplaced.status(), StatusCode::BAD_REQUEST);
    let unknown = actix_web::test::call_service(
        &service,
        admin(json!({"identifier": "odd", "name": "Odd", "isolation": "galaxy"})),
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        app.db
            .query("SELECT identifier, isolation FROM tenancy.tenants ORDER BY 1")
            .await,
        vec![
            vec![Some("big".to_string()), Some("database".to_string())],
            vec![Some("plain".to_string()), Some("schema".to_string())],
            vec![Some("small".to_string()), Some("rls".to_string())],
        ]
    );
}
{%- endif %}

#[actix_web::test]
async fn destroy_removes_each_tier_s_data_and_only_it() {
    let app = spawn_app().await;
    let premium = create(&app, "premium", Isolation::Schema).await;
    let shared = create(&app, "shared", Isolation::Rls).await;
    let own = create(&app, "own", Isolation::Database).await;
    let other = create(&app, "other", Isolation::Rls).await;
    let service = service!(app);
    for tenant in [&premium, &shared, &own, &other] {
        let (status, _) = call!(service, post "/api/notes", tenant = tenant.identifier.as_str(), json = json!({"title": "t"}));
        assert_eq!(status, StatusCode::CREATED);
    }
    for tenant in [&premium, &shared, &own] {
        app.tenancy
            .delete_tenant(&crate::helpers::operator(), &tenant.identifier)
            .await
            .unwrap();
        app.tenancy
            .destroy_tenant(
                &crate::helpers::operator(),
                &tenant.identifier,
                tenant.identifier.as_str(),
            )
            .await
            .unwrap();
        assert_eq!(app.db.notes_of(tenant).await.unwrap_or(0), 0);
    }
    assert!(
        !app.db
            .schemas()
            .await
            .contains(&"tenant_premium".to_string())
    );
    let own_database = format!("{}own", app.db.tenant_database_prefix);
    let left = app
        .db
        .query(&format!(
            "SELECT 1 FROM pg_database WHERE datname = '{own_database}'"
        ))
        .await;
    assert!(left.is_empty(), "{own_database} was not dropped");
    assert_eq!(app.db.notes_of(&other).await, Some(1));
}

#[actix_web::test]
async fn the_service_refuses_the_owner_as_its_role() {
    let app = spawn_app().await;
    // The owner (a superuser here) defeats every tier.
    app.assert_the_owner_is_refused_as_app_role("superuser")
        .await;
}

#[actix_web::test]
async fn only_a_tenant_with_a_database_of_its_own_moves_between_servers() {
    use svc::tenancy::isolation::ServerAddress;
    use svc::tenancy::lifecycle::LifecycleError;

    let app =
        crate::helpers::spawn_app_with(&[("TENANCY_DATABASE_SERVERS", "elsewhere.invalid:5432")])
            .await;
    for (name, tier) in [("premium", Isolation::Schema), ("shared", Isolation::Rls)] {
        let tenant = create(&app, name, tier).await;
        let to = ServerAddress::parse("elsewhere.invalid:5432").unwrap();
        match app
            .tenancy
            .move_tenant(
                &crate::helpers::operator(),
                &tenant.identifier,
                Some(to),
                |_| {},
            )
            .await
        {
            Err(LifecycleError::Conflict(why)) => {
                assert!(why.contains("a database of its own"), "{why}")
            }
            other => panic!("{name}: {other:?}"),
        }
        // Still served where it is, and writable.
        let got = app.tenancy.get_tenant(&tenant.identifier).await.unwrap();
        assert_eq!(got.isolation, tier);
        assert!(got.maintenance.takes_writes());
    }
}
