//! Tenant lifecycle through the same functions the CLI and the admin API call.

use crate::helpers::spawn_app;
use actix_web::http::StatusCode;

use svc::domain::{Maintenance, TenantIdentifier, TenantStatus};
use svc::tenancy::lifecycle::{LifecycleError, NewTenant, Touch};
use svc::tenancy::registry;

fn id(s: &str) -> TenantIdentifier {
    TenantIdentifier::parse(s).unwrap()
}

#[actix_web::test]
async fn create_use_suspend_activate_delete_destroy() {
    let app = spawn_app().await;
    let service = service!(app);
    let acme = app.create_tenant("acme").await;
    assert_eq!(acme.status, TenantStatus::Active);
    assert_eq!(app.db.notes_of(&acme).await, Some(0));

    let (status, _) = call!(service, post "/api/notes", tenant = "acme", json = serde_json::json!({"title": "kept"}));
    assert_eq!(status, StatusCode::CREATED);

    app.tenancy
        .suspend_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    assert_eq!(
        call!(service, get "/api/notes", tenant = "acme").0,
        StatusCode::FORBIDDEN
    );
    app.tenancy
        .activate_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    assert_eq!(
        call!(service, get "/api/notes", tenant = "acme").0,
        StatusCode::OK
    );

    // Destroy refuses a tenant that is not deleted, and a missing or wrong confirmation.
    assert!(matches!(
        app.tenancy
            .destroy_tenant(&crate::helpers::operator(), &acme.identifier, "acme")
            .await,
        Err(LifecycleError::Conflict(_))
    ));
    app.tenancy
        .delete_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    assert_eq!(
        call!(service, get "/api/notes", tenant = "acme").0,
        StatusCode::NOT_FOUND
    );
    for wrong in ["", "acm", "ACME", "globex"] {
        assert!(matches!(
            app.tenancy
                .destroy_tenant(&crate::helpers::operator(), &acme.identifier, wrong)
                .await,
            Err(LifecycleError::Invalid(_))
        ));
    }
    // Soft delete kept the data.
    assert_eq!(app.db.notes_of(&acme).await, Some(1));

    app.tenancy
        .destroy_tenant(&crate::helpers::operator(), &acme.identifier, "acme")
        .await
        .unwrap();
    assert_eq!(app.db.notes_of(&acme).await.unwrap_or(0), 0);
    assert_eq!(app.db.schemas().await, app.baseline_schemas);
    assert!(matches!(
        app.tenancy.get_tenant(&acme.identifier).await,
        Err(LifecycleError::NotFound(_))
    ));
}

#[actix_web::test]
async fn creating_an_existing_tenant_is_a_conflict() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let again = app
        .tenancy
        .create_tenant(
            &crate::helpers::operator(),
            NewTenant::new(id("acme"), "Again"),
        )
        .await;
    assert!(
        matches!(again, Err(LifecycleError::Conflict(_))),
        "{again:?}"
    );
}

#[actix_web::test]
async fn a_nul_character_in_a_name_or_metadata_is_refused_before_the_database() {
    let app = spawn_app().await;
    let mut in_metadata = NewTenant::new(id("globex"), "Globex");
    in_metadata.metadata = serde_json::json!({"plan": "pro\u{0}"});
    for new in [NewTenant::new(id("acme"), "Ac\u{0}me"), in_metadata] {
        let refused = app
            .tenancy
            .create_tenant(&crate::helpers::operator(), new)
            .await;
        match refused {
            Err(LifecycleError::Invalid(why)) => assert!(why.contains("NUL"), "{why}"),
            other => panic!("accepted or failed otherwise: {other:?}"),
        }
    }
    assert!(app.tenancy.list_tenants().await.unwrap().is_empty());
}

#[actix_web::test]
async fn an_interrupted_provisioning_is_completed_by_a_retry() {
    let app = spawn_app().await;
    // A crash after the registry row was written and before the schema existed.
    let mut conn = app.tenancy.control.get().await.unwrap();
    let half = registry::insert_or_get(
        &mut conn,
        &id("acme"),
        "Acme",
{%- if isolation == "hybrid" %}
        app.tenancy.strategy().choose(None),
{%- else %}
        svc::tenancy::isolation::ISOLATION,
{%- endif %}
        &serde_json::json!({}),
        None,
    )
    .await
    .unwrap();
    drop(conn);
    assert_eq!(half.status, TenantStatus::Provisioning);
    let service = service!(app);
    assert_eq!(
        call!(service, get "/api/notes", tenant = "acme").0,
        StatusCode::FORBIDDEN
    );

    let done = app.create_tenant("acme").await;
    assert_eq!((done.id, done.status), (half.id, TenantStatus::Active));
    assert_eq!(
        call!(service, get "/api/notes", tenant = "acme").0,
        StatusCode::OK
    );
}

#[actix_web::test]
async fn destroy_never_drops_a_schema_that_is_not_a_tenants() {
    let app = spawn_app().await;
    app.db
        .query("CREATE SCHEMA keepme; CREATE TABLE keepme.t (x int)")
        .await;
    for name in ["public", "tenancy", "keepme"] {
        let result = app
            .tenancy
            .destroy_tenant(&crate::helpers::operator(), &id(name), name)
            .await;
        assert!(
            matches!(result, Err(LifecycleError::NotFound(_))),
            "{name}: {result:?}"
        );
    }
    let mut expected = app.baseline_schemas.clone();
    expected.push("keepme".to_string());
    expected.sort();
    assert_eq!(app.db.schemas().await, expected);
}

#[actix_web::test]
async fn migrate_all_reports_progress_for_every_tenant() {
    let app = spawn_app().await;
    for name in ["a1", "a2", "a3"] {
        app.create_tenant(name).await;
    }
    let mut seen = Vec::new();
    let report = app
        .tenancy
        .migrate_all(&crate::helpers::operator(), 2, Touch::Every, |p| {
            seen.push((p.done, p.total, p.tenant.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(report.tenants, 3);
    assert!(report.failures.is_empty(), "{report:?}");
    let done: Vec<usize> = seen.iter().map(|(done, _, _)| *done).collect();
    assert_eq!(done, vec![1, 2, 3]);
    assert!(seen.iter().all(|(_, total, _)| *total == 3));
    let mut tenants: Vec<&str> = seen.iter().map(|(_, _, name)| name.as_str()).collect();
    tenants.sort();
    assert_eq!(tenants, vec!["a1", "a2", "a3"]);

    // Nothing pending: no tenant is touched, and the plan says so.
    let plan = app.tenancy.plan_migrations().await.unwrap();
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(plan.tenants, 3);
    let mut touched = 0;
    let report = app
        .tenancy
        .migrate_all(&crate::helpers::operator(), 2, Touch::Pending, |_| {
            touched += 1
        })
        .await
        .unwrap();
    assert_eq!((report.tenants, report.tenants_pending), (3, 0));
    assert_eq!(touched, 0);
}

#[actix_web::test]
async fn creation_beyond_max_tenants_is_refused_even_when_requests_race() {
    let app = crate::helpers::spawn_app_with(&[("TENANCY_MAX_TENANTS", "3")]).await;
    let by = crate::helpers::operator();
    let create = |i: usize| {
        app.tenancy.create_tenant(
            &by,
            NewTenant::new(
                TenantIdentifier::parse(&format!("racer_{i}")).unwrap(),
                "Racer",
            ),
        )
    };
    let created = futures_util::future::join_all((0..8).map(create)).await;
    assert_eq!(created.iter().filter(|c| c.is_ok()).count(), 3);
    for refused in created.iter().filter_map(|c| c.as_ref().err()) {
        assert!(
            matches!(refused, LifecycleError::Conflict(m)
                if m.contains("holds 3 tenants") && m.contains("TENANCY_MAX_TENANTS")),
            "{refused}"
        );
    }
    assert_eq!(app.tenancy.list_tenants().await.unwrap().len(), 3);

    // A deleted tenant still counts (its data is there); a destroyed one makes room.
    let first = created.iter().find_map(|c| c.as_ref().ok()).unwrap();
    app.tenancy
        .delete_tenant(&crate::helpers::operator(), &first.identifier)
        .await
        .unwrap();
    assert!(create(100).await.is_err());
    app.tenancy
        .destroy_tenant(
            &crate::helpers::operator(),
            &first.identifier,
            first.identifier.as_str(),
        )
        .await
        .unwrap();
    create(100).await.unwrap();
}

#[actix_web::test]
async fn a_read_only_tenant_is_read_and_refuses_writes_until_maintenance_ends() {
    let app = spawn_app().await;
    let service = service!(app);
    let acme = app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    let note = serde_json::json!({"title": "a note"});
    let (status, _) = call!(service, post "/api/notes", tenant = "acme", json = &note);
    assert_eq!(status, StatusCode::CREATED);

    let tenant = (app.tenancy)
        .set_maintenance(
            &crate::helpers::operator(),
            &acme.identifier,
            Maintenance::ReadOnly,
        )
        .await
        .unwrap();
    assert_eq!(tenant.maintenance, Maintenance::ReadOnly);
    for method in [
        actix_web::test::TestRequest::post(),
        actix_web::test::TestRequest::put(),
        actix_web::test::TestRequest::delete(),
        actix_web::test::TestRequest::patch(),
    ] {
        let request = crate::helpers::for_tenant(method, "/api/notes", "acme").set_json(&note);
        let response = actix_web::test::call_service(&service, request.to_request()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let body: serde_json::Value = actix_web::test::read_body_json(response).await;
        assert_eq!(body["title"], "Tenant read-only", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("'acme'"),
            "{body}"
        );
    }
    // Read as before; its neighbours write as before.
    let (status, notes) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(notes.as_array().map(Vec::len), Some(1), "{notes}");
    let (status, _) = call!(service, post "/api/notes", tenant = "globex", json = &note);
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.db.notes_of(&acme).await, Some(1));

    app.tenancy
        .set_maintenance(
            &crate::helpers::operator(),
            &acme.identifier,
            Maintenance::Off,
        )
        .await
        .unwrap();
    let (status, _) = call!(service, post "/api/notes", tenant = "acme", json = &note);
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.db.notes_of(&acme).await, Some(2));
}
