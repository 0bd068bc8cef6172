//! What only the schema-per-tenant strategy has: a schema per tenant, migrated one by one.

use crate::helpers::spawn_app;

#[actix_web::test]
async fn each_tenant_gets_its_own_schema_owned_by_the_migration_role() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    assert!(app.db.schemas().await.contains(&"tenant_acme".to_string()));
    let owner = app
        .db
        .query("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'tenant_acme'")
        .await;
    assert_ne!(owner[0][0].as_deref(), Some(app.db.app_role.as_str()));
}

#[actix_web::test]
async fn migrate_all_reports_a_broken_tenant_and_migrates_the_others() {
    let app = spawn_app().await;
    for name in ["a1", "a2", "a3"] {
        app.create_tenant(name).await;
    }
    // Break one tenant: its schema is replaced behind the registry's back.
    app.db
        .query("DROP SCHEMA tenant_a2 CASCADE; CREATE SCHEMA tenant_a2; CREATE TABLE tenant_a2.notes (x int)")
        .await;
    let mut seen = Vec::new();
    let report = app
        .tenancy
        .migrate_all(2, |p| seen.push((p.done, p.total, p.tenant.to_string())))
        .await
        .unwrap();
    assert_eq!(report.tenants, 3);
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(_, total, _)| *total == 3));
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].0, "a2");
}

#[actix_web::test]
async fn the_service_refuses_a_superuser_or_an_owner_of_tenant_schemas_as_its_role() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.tenancy.check_app_role().await.unwrap();
    app.assert_the_owner_is_refused_as_app_role("superuser")
        .await;
    // The application role made the owner of a tenant's schema.
    app.db
        .query(&format!(
            "ALTER SCHEMA tenant_acme OWNER TO \"{}\"",
            app.db.app_role
        ))
        .await;
    let refusal = app.tenancy.check_app_role().await.unwrap_err().to_string();
    assert!(refusal.contains("owns 1 tenant schemas"), "{refusal}");
}
