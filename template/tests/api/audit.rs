//! The audit trail, identifier quarantine and `destroy` dry runs, through the functions
//! the CLI and the admin API call, checked in the database.

use actix_web::http::StatusCode;

use crate::helpers::{operator, query_url, spawn_app, spawn_app_with};
use svc::domain::{Maintenance, TenantIdentifier, TenantLimits};
use svc::tenancy::lifecycle::{LifecycleError, NewTenant};

fn id(s: &str) -> TenantIdentifier {
    TenantIdentifier::parse(s).unwrap()
}

/// (operation, result, actor) of every audit row, oldest first.
async fn trail(app: &crate::helpers::TestApp) -> Vec<(String, String, String)> {
    app.db
        .query("SELECT operation, result, actor FROM tenancy.audit ORDER BY id")
        .await
        .into_iter()
        .map(|row| {
            let [operation, result, actor] = [0, 1, 2].map(|i| row[i].clone().unwrap());
            (operation, result, actor)
        })
        .collect()
}

fn row(operation: &str, result: &str) -> (String, String, String) {
    (
        operation.to_owned(),
        result.to_owned(),
        operator().to_string(),
    )
}

#[actix_web::test]
async fn every_lifecycle_operation_writes_exactly_one_audit_row_with_its_actor_and_result() {
    let app = spawn_app().await;
    let by = operator();
    let acme = id("acme");
    let t = &app.tenancy;
    let mut expected = Vec::new();

    t.create_tenant(&by, NewTenant::new(acme.clone(), "Acme"))
        .await
        .unwrap();
    expected.push(row("create", "ok"));
    assert!(matches!(
        t.create_tenant(&by, NewTenant::new(acme.clone(), "Acme"))
            .await,
        Err(LifecycleError::Conflict(_))
    ));
    expected.push(row("create", "refused"));
    t.suspend_tenant(&by, &acme).await.unwrap();
    expected.push(row("suspend", "ok"));
    t.activate_tenant(&by, &acme).await.unwrap();
    expected.push(row("activate", "ok"));
    assert!(t.suspend_tenant(&by, &id("ghost")).await.is_err());
    expected.push(row("suspend", "refused"));
    let limits: TenantLimits =
        serde_json::from_value(serde_json::json!({"max_connections": 3})).unwrap();
    t.set_limits(&by, &acme, limits).await.unwrap();
    expected.push(row("limits", "ok"));
    t.set_maintenance(&by, &acme, Maintenance::ReadOnly)
        .await
        .unwrap();
    expected.push(row("maintenance", "ok"));
    assert!(
        t.set_maintenance(&by, &acme, Maintenance::Migrating)
            .await
            .is_err()
    );
    expected.push(row("maintenance", "refused"));
    t.delete_tenant(&by, &acme).await.unwrap();
    expected.push(row("delete", "ok"));
    assert!(t.destroy_tenant(&by, &acme, "wrong").await.is_err());
    expected.push(row("destroy", "refused"));
    t.destroy_tenant(&by, &acme, "acme").await.unwrap();
    expected.push(row("destroy", "ok"));
    t.release_identifier(&by, &acme).await.unwrap();
    expected.push(row("release", "ok"));
    assert!(t.release_identifier(&by, &acme).await.is_err());
    expected.push(row("release", "refused"));

    assert_eq!(trail(&app).await, expected);

    // What each row holds: the tenant (kept after the destroy), the parameters, the error
    // of a refusal, a duration.
    let history = t.history(&acme, 100, None).await.unwrap();
    // All but the refused suspension of `ghost`, which has a history of its own.
    assert_eq!(history.len(), expected.len() - 1);
    assert_eq!(t.history(&id("ghost"), 100, None).await.unwrap().len(), 1);
    let created = history.last().unwrap();
    assert_eq!(created.operation, "create");
    assert!(created.tenant_id.is_some());
    assert_eq!(created.params["name"], "Acme");
    let limits = history.iter().find(|e| e.operation == "limits").unwrap();
    assert_eq!(limits.params["max_connections"], 3);
    let maintenance = history
        .iter()
        .find(|e| e.operation == "maintenance" && e.result == "ok")
        .unwrap();
    assert_eq!(maintenance.params["mode"], "read_only");
    let refused = history
        .iter()
        .find(|e| e.operation == "destroy" && e.result == "refused")
        .unwrap();
    assert!(
        refused.error.as_deref().unwrap().contains("confirmation"),
        "{refused:?}"
    );
    let destroyed = history
        .iter()
        .find(|e| e.operation == "destroy" && e.result == "ok")
        .unwrap();
    assert_eq!(destroyed.tenant_id, created.tenant_id);
    assert!(history.iter().all(|e| e.duration_ms >= 0));
    // Newest first, and paged by id.
    assert_eq!(history[0].operation, "release");
    let older = t.history(&acme, 2, Some(history[1].id)).await.unwrap();
    assert_eq!(
        older.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![history[2].id, history[3].id]
    );
}

#[actix_web::test]
async fn a_creation_records_its_metadata_keys_never_their_values() {
    let app = spawn_app().await;
    let new = NewTenant {
        metadata: serde_json::json!({"plan": "gold", "contact": "ceo@acme.example"}),
        ..NewTenant::new(id("acme"), "Acme")
    };
    app.tenancy.create_tenant(&operator(), new).await.unwrap();
    let params = app
        .db
        .query("SELECT params::text FROM tenancy.audit")
        .await
        .remove(0)
        .remove(0)
        .unwrap();
    assert!(params.contains("\"metadata_keys\""), "{params}");
    assert!(!params.contains("ceo@acme.example"), "{params}");
    assert!(!params.contains("gold"), "{params}");
}

#[actix_web::test]
async fn the_audit_trail_is_append_only_for_the_application_role_and_the_owner() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let (app_url, owner_url) = (&app.db.app_url, &app.db.url);

    // The application role (what `serve` connects as) may add and read rows...
    query_url(
        app_url,
        "INSERT INTO tenancy.audit (actor, identifier, operation, result, duration_ms) \
         VALUES ('api:x', 'acme', 'suspend', 'ok', 1)",
    )
    .await
    .unwrap();
    assert_eq!(
        query_url(app_url, "SELECT count(*) FROM tenancy.audit")
            .await
            .unwrap(),
        vec![vec![Some("2".to_owned())]]
    );
    // ...and change or remove none: no privilege for it.
    for sql in [
        "UPDATE tenancy.audit SET result = 'failed'",
        "DELETE FROM tenancy.audit",
        "TRUNCATE tenancy.audit",
    ] {
        let refused = query_url(app_url, sql).await.unwrap_err();
        let refused = format!("{refused:?}");
        assert!(refused.contains("permission denied"), "{sql}: {refused}");
    }
    // The owner neither: the trigger refuses every role.
    for sql in [
        "UPDATE tenancy.audit SET result = 'failed'",
        "DELETE FROM tenancy.audit",
        "TRUNCATE tenancy.audit",
    ] {
        let refused = query_url(owner_url, sql).await.unwrap_err();
        let refused = format!("{refused:?}");
        assert!(refused.contains("append-only"), "{sql}: {refused}");
    }
    assert_eq!(
        app.db
            .query("SELECT count(*) FROM tenancy.audit WHERE result = 'ok'")
            .await,
        vec![vec![Some("2".to_owned())]]
    );
}

#[actix_web::test]
async fn a_destroyed_tenants_identifier_is_quarantined_until_released() {
    let app = spawn_app().await;
    let (by, acme) = (operator(), id("acme"));
    let t = &app.tenancy;
    let first = app.create_tenant("acme").await;
    t.delete_tenant(&by, &acme).await.unwrap();
    t.destroy_tenant(&by, &acme, "acme").await.unwrap();

    let refused = t
        .create_tenant(&by, NewTenant::new(acme.clone(), "Acme again"))
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(matches!(refused, LifecycleError::Conflict(_)), "{message}");
    assert!(
        message.contains("quarantined until")
            && message.contains("TENANCY_IDENTIFIER_QUARANTINE_DAYS")
            && message.contains("tenant release acme"),
        "{message}"
    );
    assert!(t.get_tenant(&acme).await.is_err(), "no row was left behind");
    let until = app
        .db
        .query(
            "SELECT (until - destroyed_at BETWEEN interval '29 days 23 hours' \
             AND interval '30 days 1 hour')::text, tenant_id::text FROM tenancy.quarantine",
        )
        .await;
    assert_eq!(
        until,
        vec![vec![Some("true".to_owned()), Some(first.id.to_string())]]
    );
    // Other identifiers are not concerned.
    app.create_tenant("globex").await;

    t.release_identifier(&by, &acme).await.unwrap();
    let second = app.create_tenant("acme").await;
    assert_ne!(second.id, first.id);
}

#[actix_web::test]
async fn without_quarantine_an_identifier_is_free_at_once() {
    let app = spawn_app_with(&[("TENANCY_IDENTIFIER_QUARANTINE_DAYS", "0")]).await;
    let (by, acme) = (operator(), id("acme"));
    app.create_tenant("acme").await;
    app.tenancy.delete_tenant(&by, &acme).await.unwrap();
    app.tenancy
        .destroy_tenant(&by, &acme, "acme")
        .await
        .unwrap();
    app.create_tenant("acme").await;
    assert!(
        app.db
            .query("SELECT * FROM tenancy.quarantine")
            .await
            .is_empty()
    );
}

#[actix_web::test]
async fn a_destroy_dry_run_lists_what_would_go_and_changes_nothing() {
    let app = spawn_app().await;
    let service = service!(app);
    let acme = app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    for (tenant, notes) in [("acme", 3), ("globex", 2)] {
        for i in 0..notes {
            let (status, _) = call!(service, post "/api/notes", tenant = tenant, json = serde_json::json!({"title": format!("n{i}")}));
            assert_eq!(status, StatusCode::CREATED);
        }
    }
    let snapshot = "SELECT (SELECT count(*) FROM tenancy.audit)::text, \
                    (SELECT string_agg(identifier || status, ',' ORDER BY identifier) \
                     FROM tenancy.tenants)";
    let before = app.db.query(snapshot).await;
    let schemas = app.db.schemas().await;

    // A tenant not yet deleted can be planned (destroy itself would refuse it).
    let (tenant, plan) = app.tenancy.destroy_plan(&acme.identifier).await.unwrap();
    assert_eq!(tenant.id, acme.id);
    assert!(plan.exists, "{plan:?}");
    let notes = plan.tables.iter().find(|t| t.table == "notes").unwrap();
    // Only acme's rows, never globex's, whatever the strategy.
    assert_eq!(notes.rows, 3, "{plan:?}");
    assert!(!plan.storage.is_empty());

    assert_eq!(app.db.query(snapshot).await, before);
    assert_eq!(app.db.schemas().await, schemas);
    assert_eq!(app.db.notes_of(&acme).await, Some(3));
    assert!(matches!(
        app.tenancy.destroy_plan(&id("ghost")).await,
        Err(LifecycleError::NotFound(_))
    ));
}
