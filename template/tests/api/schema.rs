//! What only the schema-per-tenant strategy has: a schema per tenant, migrated one by one.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, operator, query_url, spawn_app};
use crate::servers::{OtherServer, create_on, spawn_behind_poolers, spawn_with_other_server};
use svc::domain::{Isolation, Maintenance, ServerAddress, TenantIdentifier, TenantStatus};
use svc::tenancy::lifecycle::{LifecycleError, Touch};
use svc::tenancy::registry;

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
        .migrate_all(&crate::helpers::operator(), 2, Touch::Every, |p| {
            seen.push((p.done, p.total, p.tenant.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(report.tenants, 3);
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(_, total, _)| *total == 3));
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].0, "a2");
    // One audit row per tenant touched, the failure with its error.
    let trail = app
        .db
        .query(
            "SELECT identifier, result, actor, (error IS NOT NULL)::text FROM tenancy.audit \
             WHERE operation = 'migrate' ORDER BY identifier",
        )
        .await;
    let by = crate::helpers::operator().to_string();
    let row = |tenant: &str, result: &str, error: &str| {
        [tenant, result, by.as_str(), error]
            .map(|v| Some(v.to_owned()))
            .to_vec()
    };
    assert_eq!(
        trail,
        vec![
            row("a1", "ok", "false"),
            row("a2", "failed", "true"),
            row("a3", "ok", "false"),
        ]
    );
}

/// Makes `tenant` lack its migrations again: their record emptied, their table gone.
async fn unmigrate(app: &TestApp, tenant: &str) {
    app.db
        .query(&format!(
            "DROP TABLE tenant_{tenant}.notes; DELETE FROM tenant_{tenant}.__diesel_schema_migrations"
        ))
        .await;
}

/// The tenant's maintenance, as the registry has it.
async fn maintenance(app: &TestApp, tenant: &str) -> String {
    app.db
        .query(&format!(
            "SELECT maintenance FROM tenancy.tenants WHERE identifier = '{tenant}'"
        ))
        .await[0][0]
        .clone()
        .unwrap()
}

#[actix_web::test]
async fn migrate_plans_and_touches_only_the_tenants_with_something_pending() {
    let app = spawn_app().await;
    for name in ["p1", "p2", "p3", "p4"] {
        app.create_tenant(name).await;
    }
    let plan = app.tenancy.plan_migrations().await.unwrap();
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(plan.tenants, 4);

    unmigrate(&app, "p2").await;
    unmigrate(&app, "p4").await;
    // An operator's maintenance outlasts a migration.
    let p4 = TenantIdentifier::parse("p4").unwrap();
    (app.tenancy)
        .set_maintenance(&crate::helpers::operator(), &p4, Maintenance::ReadOnly)
        .await
        .unwrap();
    let plan = app.tenancy.plan_migrations().await.unwrap();
    let planned: Vec<(String, Vec<String>)> = plan
        .pending
        .iter()
        .map(|(tenant, versions)| (tenant.to_string(), versions.clone()))
        .collect();
    let every = vec!["20260101000000".to_owned()];
    assert_eq!(
        planned,
        [("p2".to_owned(), every.clone()), ("p4".to_owned(), every)]
    );
    assert!(plan.control.is_empty(), "{plan:?}");
    // The plan changed nothing.
    let recorded = app
        .db
        .query("SELECT count(*) FROM tenant_p2.__diesel_schema_migrations")
        .await;
    assert_eq!(recorded[0][0].as_deref(), Some("0"));

    let mut seen = Vec::new();
    let report = app
        .tenancy
        .migrate_all(&crate::helpers::operator(), 4, Touch::Pending, |p| {
            seen.push((p.tenant.to_string(), p.total))
        })
        .await
        .unwrap();
    seen.sort();
    assert_eq!(seen, [("p2".to_owned(), 2), ("p4".to_owned(), 2)]);
    assert_eq!(
        (
            report.tenants,
            report.tenants_pending,
            report.tenants_changed
        ),
        (4, 2, 2),
        "{report:?}"
    );
    assert!(app.tenancy.plan_migrations().await.unwrap().is_empty());
    assert_eq!(maintenance(&app, "p2").await, "off");
    assert_eq!(maintenance(&app, "p4").await, "read_only");
}

#[actix_web::test]
async fn a_tenant_is_read_only_while_migrate_changes_it() {
    let app = spawn_app().await;
    let service = service!(app);
    app.create_tenant("m1").await;
    app.create_tenant("m2").await;
    unmigrate(&app, "m1").await;
    // Holding the migration's lock, the test holds migrate half-way: m1 marked, waiting.
    let (holder, connection) = tokio_postgres::connect(&app.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    let lock = "SELECT pg_advisory_lock(hashtext('migrate:tenant_m1'))";
    holder.execute(lock, &[]).await.unwrap();
    let tenancy = app.tenancy.clone();
    let migrating = actix_web::rt::spawn(async move {
        tenancy
            .migrate_all(&crate::helpers::operator(), 4, Touch::Pending, |_| {})
            .await
    });
    let since = Instant::now();
    while maintenance(&app, "m1").await != "migrating" {
        assert!(since.elapsed() < Duration::from_secs(10), "never marked");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let note = json!({"title": "during"});
    let (status, body) = call!(service, post "/api/notes", tenant = "m1", json = &note);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("migrated"),
        "{body}"
    );
    // Its neighbour writes as before.
    let (status, _) = call!(service, post "/api/notes", tenant = "m2", json = &note);
    assert_eq!(status, StatusCode::CREATED);
    assert!(!migrating.is_finished());

    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .await
        .unwrap();
    let report = migrating.await.unwrap().unwrap();
    assert_eq!(report.tenants_changed, 1, "{report:?}");
    assert_eq!(maintenance(&app, "m1").await, "off");
    let (status, _) = call!(service, post "/api/notes", tenant = "m1", json = &note);
    assert_eq!(status, StatusCode::CREATED);
}

#[actix_web::test]
async fn migrating_is_set_by_migrate_alone() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let refused = (app.tenancy)
        .set_maintenance(
            &crate::helpers::operator(),
            &acme.identifier,
            Maintenance::Migrating,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("read_only or off"), "{refused}");
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

/// The functions through which the application role creates and drops tenant schemas do
/// only what the registry says, and nobody else may run them.
#[actix_web::test]
async fn the_application_role_creates_and_drops_schemas_only_as_the_registry_says() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let attempts = [
        // acme is active: provisioned already, and not deleted.
        ("SELECT tenancy.provision_schema('acme')", "is provisioning"),
        ("SELECT tenancy.drop_tenant_schema('acme')", "is deleted"),
        (
            "SELECT tenancy.provision_schema('ghost')",
            "is provisioning",
        ),
        (
            "SELECT tenancy.drop_tenant_schema('acme\"; DROP SCHEMA tenancy CASCADE; --')",
            "invalid tenant identifier",
        ),
        ("DROP SCHEMA tenant_acme CASCADE", "must be owner"),
        ("CREATE SCHEMA tenant_evil", "permission denied"),
        (
            "SELECT * FROM tenancy.tenant_migrations",
            "permission denied",
        ),
    ];
    for (sql, expected) in attempts {
        let refused = crate::helpers::query_url(&app.db.app_url, sql)
            .await
            .unwrap_err();
        let refused = format!("{refused:?}");
        assert!(refused.contains(expected), "{sql}: {refused}");
    }
    assert!(app.db.schemas().await.contains(&"tenant_acme".to_owned()));
    assert!(app.db.schemas().await.contains(&"tenancy".to_owned()));
    // Functions are everyone's to run by default: not these.
    let public_grants = app
        .db
        .query(
            "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a \
             WHERE p.proname IN ('provision_schema', 'drop_tenant_schema', 'tenant_schema') \
             AND a.grantee = 0",
        )
        .await;
    assert_eq!(public_grants, vec![vec![Some("0".to_owned())]]);
}

/// `migrate` keeps its connections from one tenant to the next, each tenant's
/// `search_path` set for its own transaction: every schema gets its own tables and
/// records, and nothing lands in another's.
#[actix_web::test]
async fn migrations_on_reused_connections_land_in_each_tenants_own_schema() {
    let app = spawn_app().await;
    let names = ["r1", "r2", "r3", "r4", "r5"];
    for name in names {
        app.create_tenant(name).await;
        unmigrate(&app, name).await;
    }
    // One at a time: one connection serves them all, in turn.
    let report = app
        .tenancy
        .migrate_all(&crate::helpers::operator(), 1, Touch::Pending, |_| {})
        .await
        .unwrap();
    assert_eq!((report.tenants_pending, report.tenants_changed), (5, 5));
    let tables = app
        .db
        .query(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables \
             WHERE table_schema LIKE 'tenant_r_' ORDER BY 1",
        )
        .await;
    let expected: Vec<Vec<Option<String>>> = names
        .iter()
        .flat_map(|name| {
            ["__diesel_schema_migrations", "notes"]
                .map(|table| vec![Some(format!("tenant_{name}.{table}"))])
        })
        .collect();
    assert_eq!(tables, expected);
    for name in names {
        let recorded = app
            .db
            .query(&format!(
                "SELECT string_agg(version, ',') FROM tenant_{name}.__diesel_schema_migrations"
            ))
            .await;
        assert_eq!(recorded[0][0].as_deref(), Some("20260101000000"), "{name}");
    }
}

/// What Citus 12 or later (distributed PostgreSQL) asks of a schema it distributes whole,
/// checked on a tenant's schema here, on plain PostgreSQL: its tables reference no table
/// outside it (nor is one referenced from outside), none is a foreign table, none
/// inherits across schemas. The schema is created with the setting that makes Citus
/// distribute it; Citus is not installed here, so what it does then is not tested.
#[actix_web::test]
async fn a_tenant_schema_is_ready_to_be_a_distributed_schema() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let none = Vec::<Vec<Option<String>>>::new();
    let tables = app
        .db
        .query(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'tenant_acme'::regnamespace \
             AND c.relkind IN ('r', 'p', 'f') ORDER BY 1",
        )
        .await;
    assert!(
        tables.contains(&vec![Some("notes".to_owned())]),
        "{tables:?}"
    );

    let across = app
        .db
        .query(
            "SELECT k.conname || ' ' || k.conrelid::regclass || ' -> ' || k.confrelid::regclass \
             FROM pg_constraint k JOIN pg_class f ON f.oid = k.conrelid \
             JOIN pg_class t ON t.oid = k.confrelid WHERE k.contype = 'f' \
             AND (f.relnamespace = 'tenant_acme'::regnamespace \
                  OR t.relnamespace = 'tenant_acme'::regnamespace) \
             AND f.relnamespace <> t.relnamespace",
        )
        .await;
    assert_eq!(across, none, "foreign keys across the schema's border");

    let foreign_tables = app
        .db
        .query(
            "SELECT relname FROM pg_class WHERE relnamespace = 'tenant_acme'::regnamespace \
             AND relkind = 'f'",
        )
        .await;
    assert_eq!(foreign_tables, none, "foreign tables");

    let inheriting = app
        .db
        .query(
            "SELECT i.inhrelid::regclass || ' <- ' || i.inhparent::regclass FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
             WHERE (c.relnamespace = 'tenant_acme'::regnamespace \
                    OR p.relnamespace = 'tenant_acme'::regnamespace) \
             AND (c.relnamespace <> p.relnamespace OR NOT p.relkind = 'p')",
        )
        .await;
    assert_eq!(
        inheriting, none,
        "inheritance (other than partitions in the schema)"
    );

    let setting = app
        .db
        .query(
            "SELECT array_to_string(proconfig, ' ') FROM pg_proc \
             WHERE oid = 'tenancy.provision_schema(text)'::regprocedure",
        )
        .await;
    assert!(
        setting[0][0]
            .as_deref()
            .is_some_and(|s| s.contains("citus.enable_schema_based_sharding=on")),
        "{setting:?}"
    );
}

/// The tenant schemas on the other server, in the test's database there.
async fn schemas_on(other: &OtherServer) -> Vec<String> {
    let url = format!("{}/{}", other.base_url, other.database);
    let sql = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1";
    let rows = query_url(&url, sql).await.unwrap();
    rows.into_iter().filter_map(|row| row[0].clone()).collect()
}

/// The titles in `schema`'s notes, on the other server.
async fn titles_on(other: &OtherServer, schema: &str) -> Vec<String> {
    let url = format!("{}/{}", other.base_url, other.database);
    let rows = query_url(
        &url,
        &format!("SELECT title FROM {schema}.notes ORDER BY 1"),
    )
    .await
    .unwrap();
    rows.into_iter().filter_map(|row| row[0].clone()).collect()
}

#[actix_web::test]
async fn a_tenant_placed_on_another_server_is_provisioned_served_and_destroyed_there() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let server = ServerAddress::parse(&other.address).unwrap();
    let far = create_on(&app, "far", &other.address).await.unwrap();
    let near = app.create_tenant("near").await;
    assert_eq!(
        (far.status, far.server.as_ref()),
        (TenantStatus::Active, Some(&server))
    );
    assert_eq!(near.server, None);

    // Its schema is on its server, and only there.
    assert_eq!(schemas_on(&other).await, ["tenant_far"]);
    let here = app.db.schemas().await;
    assert!(here.contains(&"tenant_near".to_string()), "{here:?}");
    assert!(!here.contains(&"tenant_far".to_string()), "{here:?}");

    // Both are served by the one service, each from its own schema: every row of every
    // answer is the tenant's own.
    let service = service!(app);
    for name in ["far", "near"] {
        for n in 0..3 {
            let title = format!("{name}-{n}");
            let (status, body) =
                call!(service, post "/api/notes", tenant = name, json = json!({"title": title}));
            assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        }
    }
    for name in ["far", "near"] {
        let (status, body) = call!(service, get "/api/notes", tenant = name);
        assert_eq!(status, StatusCode::OK);
        let mut titles: Vec<&str> = (body.as_array().unwrap().iter())
            .map(|note| note["title"].as_str().unwrap())
            .collect();
        titles.sort_unstable();
        assert_eq!(
            titles,
            [0, 1, 2].map(|n| format!("{name}-{n}")),
            "{name}: {body}"
        );
    }
    assert_eq!(
        titles_on(&other, "tenant_far").await,
        ["far-0", "far-1", "far-2"]
    );
    let near_titles = app
        .db
        .query("SELECT title FROM tenant_near.notes ORDER BY 1")
        .await;
    assert_eq!(near_titles.len(), 3);
    // The service reaches the other server as the application role.
    let sql = format!(
        "SELECT 1 FROM pg_stat_activity WHERE usename = '{}' AND datname = '{}'",
        app.db.app_role, other.database
    );
    assert!(!query_url(&other.admin_url, &sql).await.unwrap().is_empty());

    // `migrate` reads each server: nothing is pending, on either; a schema on the other
    // server that lacks its migrations is seen there.
    let plan = app.tenancy.plan_migrations().await.unwrap();
    assert_eq!((plan.tenants, plan.pending.len()), (2, 0), "{plan:?}");
    let url = format!("{}/{}", other.base_url, other.database);
    let forget = "DELETE FROM tenant_far.__diesel_schema_migrations";
    query_url(&url, forget).await.unwrap();
    let plan = app.tenancy.plan_migrations().await.unwrap();
    let pending: Vec<&str> = plan.pending.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(pending, ["far"], "{plan:?}");
    // A server that is not listed is refused before anything is recorded.
    let refused = create_on(&app, "lost", "nowhere.invalid").await;
    assert!(
        matches!(&refused, Err(LifecycleError::Invalid(why)) if why.contains("TENANCY_DATABASE_SERVERS")),
        "{refused:?}"
    );
    assert!(
        app.tenancy
            .get_tenant(&TenantIdentifier::parse("lost").unwrap())
            .await
            .is_err()
    );

    // Destroy drops it on its server; the other tenant keeps its own.
    app.tenancy
        .delete_tenant(&operator(), &far.identifier)
        .await
        .unwrap();
    let (_, plan) = app.tenancy.destroy_plan(&far.identifier).await.unwrap();
    assert!(plan.exists, "{plan:?}");
    assert!(plan.storage.contains("tenant_far"), "{plan:?}");
    let rows: Vec<(&str, i64)> = (plan.tables.iter())
        .map(|t| (t.table.as_str(), t.rows))
        .collect();
    assert!(rows.contains(&("notes", 3)), "{plan:?}");
    app.tenancy
        .destroy_tenant(&operator(), &far.identifier, "far")
        .await
        .unwrap();
    assert!(schemas_on(&other).await.is_empty());
    assert!(app.db.schemas().await.contains(&"tenant_near".to_string()));
}

#[actix_web::test]
async fn new_tenants_go_to_the_server_with_the_fewest_and_migrate_completes_one_left_registered() {
    let db = crate::helpers::TestDatabase::create().await;
    let Some(other) = OtherServer::start(&db).await else {
        return;
    };
    let app =
        crate::helpers::spawn_app_on(db, &[("TENANCY_DATABASE_SERVERS", &other.address)]).await;
    // A tie goes to the default server; then each goes where fewer are.
    let mut placed = Vec::new();
    for name in ["t1", "t2", "t3", "t4"] {
        placed.push(app.create_tenant(name).await.server.map(String::from));
    }
    let there = Some(other.address.clone());
    assert_eq!(placed, [None, there.clone(), None, there.clone()]);
    assert_eq!(schemas_on(&other).await, ["tenant_t2", "tenant_t4"]);

    // A tenant registered for the other server and never provisioned there (a process
    // without the owner's URL, or a crash) is completed by `migrate`.
    let half = TenantIdentifier::parse("half").unwrap();
    let server = ServerAddress::parse(&other.address).unwrap();
    let mut conn = app.tenancy.control.get().await.unwrap();
    let registered = registry::insert_or_get(
        &mut conn,
        &half,
        "Half",
        Isolation::Schema,
        &json!({}),
        Some(&server),
    )
    .await
    .unwrap();
    drop(conn);
    assert_eq!(registered.status, TenantStatus::Provisioning);
    let report = app
        .tenancy
        .migrate_all(&operator(), 2, Touch::Pending, |_| {})
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let now = app.tenancy.get_tenant(&half).await.unwrap();
    assert_eq!(now.status, TenantStatus::Active);
    assert!(
        schemas_on(&other)
            .await
            .contains(&"tenant_half".to_string())
    );

    // `/health` and `/metrics` say how each server answers and how many tenants it holds.
    let service = service!(app);
    let request = actix_web::test::TestRequest::get()
        .uri("/health")
        .to_request();
    let health: serde_json::Value =
        actix_web::test::call_and_read_body_json(&service, request).await;
    let servers = &health["checks"]["servers"];
    assert_eq!(servers[0]["server"], "default", "{health}");
    assert_eq!(servers[0]["tenants"], 2, "{health}");
    assert_eq!(servers[1]["server"], json!(other.address), "{health}");
    assert_eq!(servers[1]["tenants"], 3, "{health}");
    assert_eq!(
        (&servers[0]["status"], &servers[1]["status"]),
        (&json!("up"), &json!("up"))
    );
    let request = actix_web::test::TestRequest::get()
        .uri("/metrics")
        .to_request();
    let metrics = actix_web::test::call_and_read_body(&service, request).await;
    let metrics = String::from_utf8_lossy(&metrics);
    let line = [
        "tenancy_database_server_tenants{server=\"",
        &other.address,
        "\"} 3",
    ]
    .concat();
    assert!(metrics.contains(&line), "{metrics}");
}

#[actix_web::test]
async fn tenants_on_two_servers_each_behind_a_transaction_pooler_stay_isolated() {
    let Some((app, other, [near, far])) = spawn_behind_poolers("fewest").await else {
        return;
    };
    // Placed in turn on each server, each reached through its own pooler: every row of
    // every answer is checked.
    crate::isolation::concurrent_tenants_never_see_each_other(&app, 10, 10).await;
    let tenants = app.tenancy.list_tenants().await.unwrap();
    let there = (tenants.iter())
        .filter(|t| t.server.as_ref().map(|s| s.as_str()) == Some(other.address.as_str()))
        .count();
    assert_eq!((tenants.len(), there), (10, 5));
    let mut on_other = schemas_on(&other).await;
    on_other.sort();
    let mut placed: Vec<String> = (tenants.iter())
        .filter(|t| t.server.is_some())
        .map(|t| format!("tenant_{}", t.identifier))
        .collect();
    placed.sort();
    assert_eq!(on_other, placed);
    // The application role went through each server's pooler.
    for (pooler, database) in [(&near, &app.db.name), (&far, &other.database)] {
        assert!(
            pooler.databases_logged_in().contains(database),
            "{database}: {:?}",
            pooler.databases_logged_in()
        );
    }
}
