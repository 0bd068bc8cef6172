//! Row-Level Security as PostgreSQL enforces it, checked on raw connections of the
//! application role: an unset tenant sees and writes nothing, a tenant cannot reach
//! another tenant's rows by naming its id, and the role cannot switch RLS off. Tenants
//! placed on another server are served from its shared tables.

use crate::helpers::{TestApp, operator, query_url, spawn_app};
use crate::servers::{OtherServer, create_on, spawn_behind_poolers, spawn_with_other_server};
use actix_web::http::StatusCode;
use serde_json::json;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use svc::domain::{Isolation, ServerAddress, Tenant, TenantIdentifier, TenantStatus};
use svc::jobs::Job;
use svc::routes::Object;
use svc::routes::notes::{ImportNotes, NoteInput};
use svc::tenancy::lifecycle::{LifecycleError, Touch};
use svc::tenancy::registry;

/// A raw session of the application role on the shared tables, with no tenant set.
async fn app_session(app: &TestApp) -> Client {
    let (client, connection) = tokio_postgres::connect(&app.db.app_url, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("SET search_path = tenancy_data")
        .await
        .unwrap();
    client
}

/// The first column of the last row `sql` returns, or the error's message.
async fn try_sql(client: &Client, sql: &str) -> Result<Option<String>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| e.to_string())?;
    let value = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .next_back()
        .flatten();
    Ok(value)
}

async fn tenant_with_notes(app: &TestApp, name: &str, notes: usize) -> Tenant {
    let tenant = app.create_tenant(name).await;
    let service = service!(app);
    for i in 0..notes {
        let (status, _) = call!(service, post "/api/notes", tenant = name, json = json!({"title": format!("{name} {i}")}));
        assert_eq!(status, StatusCode::CREATED);
    }
    tenant
}

#[actix_web::test]
async fn with_no_tenant_set_selects_return_nothing_and_inserts_fail() {
    let app = spawn_app().await;
    let acme = tenant_with_notes(&app, "acme", 2).await;
    let session = app_session(&app).await;
    assert_eq!(
        try_sql(&session, "SELECT count(*) FROM notes").await,
        Ok(Some("0".into()))
    );
    assert!(
        try_sql(&session, "INSERT INTO notes (title) VALUES ('orphan')")
            .await
            .is_err()
    );
    let explicit = format!(
        "INSERT INTO notes (tenant_id, title) VALUES ('{}', 'sneaky')",
        acme.id
    );
    assert!(try_sql(&session, &explicit).await.is_err());
    // A setting that was used and emptied again is '' (not NULL): still nothing.
    try_sql(
        &session,
        &format!("SELECT set_config('app.tenant_id', '{}', false)", acme.id),
    )
    .await
    .unwrap();
    assert_eq!(
        try_sql(&session, "SELECT count(*) FROM notes").await,
        Ok(Some("2".into()))
    );
    try_sql(&session, "SELECT set_config('app.tenant_id', '', false)")
        .await
        .unwrap();
    assert_eq!(
        try_sql(&session, "SELECT count(*) FROM notes").await,
        Ok(Some("0".into()))
    );
    assert!(
        try_sql(&session, "INSERT INTO notes (title) VALUES ('orphan')")
            .await
            .is_err()
    );
    assert_eq!(app.db.notes_of(&acme).await, Some(2));
}

#[actix_web::test]
async fn a_tenant_naming_another_tenants_id_reaches_nothing() {
    let app = spawn_app().await;
    let acme = tenant_with_notes(&app, "acme", 1).await;
    let globex = tenant_with_notes(&app, "globex", 1).await;
    let session = app_session(&app).await;
    try_sql(
        &session,
        &format!("SELECT set_config('app.tenant_id', '{}', false)", acme.id),
    )
    .await
    .unwrap();
    let other = globex.id;
    for (sql, expected) in [
        (
            format!("SELECT count(*) FROM notes WHERE tenant_id = '{other}'"),
            "0",
        ),
        (
            format!(
                "WITH u AS (UPDATE notes SET title = 'owned' WHERE tenant_id = '{other}' RETURNING 1) SELECT count(*) FROM u"
            ),
            "0",
        ),
        (
            format!(
                "WITH d AS (DELETE FROM notes WHERE tenant_id = '{other}' RETURNING 1) SELECT count(*) FROM d"
            ),
            "0",
        ),
        ("SELECT count(*) FROM notes".to_string(), "1"),
    ] {
        assert_eq!(
            try_sql(&session, &sql).await,
            Ok(Some(expected.into())),
            "{sql}"
        );
    }
    let write = format!("INSERT INTO notes (tenant_id, title) VALUES ('{other}', 'planted')");
    assert!(try_sql(&session, &write).await.is_err());
    let moved = format!("UPDATE notes SET tenant_id = '{other}'");
    assert!(try_sql(&session, &moved).await.is_err());
    assert_eq!(app.db.notes_of(&globex).await, Some(1));
    let title = app
        .db
        .query(&format!(
            "SELECT title FROM tenancy_data.notes WHERE tenant_id = '{other}'"
        ))
        .await;
    assert_eq!(title[0][0].as_deref(), Some("globex 0"));
}

#[actix_web::test]
async fn the_application_role_cannot_switch_row_level_security_off() {
    let app = spawn_app().await;
    tenant_with_notes(&app, "acme", 1).await;
    let owner = app
        .db
        .query("SELECT tableowner FROM pg_tables WHERE tablename = 'notes'")
        .await[0][0]
        .clone()
        .unwrap();
    let session = app_session(&app).await;
    let attempts = [
        format!("SET ROLE \"{owner}\""),
        "ALTER TABLE notes DISABLE ROW LEVEL SECURITY".to_string(),
        "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY".to_string(),
        "DROP POLICY tenant_isolation ON notes".to_string(),
        "ALTER POLICY tenant_isolation ON notes USING (true)".to_string(),
        "CREATE POLICY everything ON notes USING (true)".to_string(),
        "CREATE TABLE tenancy_data.mine (x int)".to_string(),
        "CREATE TABLE public.mine (x int)".to_string(),
        "CREATE SCHEMA mine".to_string(),
        "DROP TABLE notes".to_string(),
        "TRUNCATE notes".to_string(),
        "ALTER TABLE notes ADD COLUMN x int".to_string(),
        "SET row_security = off; SELECT count(*) FROM notes".to_string(),
    ];
    for sql in &attempts {
        assert!(
            try_sql(&session, sql).await.is_err(),
            "the application role could run: {sql}"
        );
    }
    let state = app
        .db
        .query(
            "SELECT c.relrowsecurity::text, c.relforcerowsecurity::text, \
                (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)::text \
                FROM pg_class c WHERE c.relname = 'notes'",
        )
        .await;
    assert_eq!(
        state,
        vec![vec![
            Some("true".into()),
            Some("true".into()),
            Some("1".into())
        ]]
    );
}

#[actix_web::test]
async fn the_service_refuses_a_role_that_bypasses_row_level_security() {
    let app = spawn_app().await;
    // The owner (a superuser here) as the application role.
    app.assert_the_owner_is_refused_as_app_role("Row-Level Security")
        .await;
}

#[actix_web::test]
async fn destroy_deletes_only_that_tenants_rows() {
    let app = spawn_app().await;
    let acme = tenant_with_notes(&app, "acme", 2).await;
    let globex = tenant_with_notes(&app, "globex", 1).await;
    app.tenancy
        .delete_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    app.tenancy
        .destroy_tenant(&crate::helpers::operator(), &acme.identifier, "acme")
        .await
        .unwrap();
    assert_eq!(app.db.notes_of(&acme).await, Some(0));
    assert_eq!(app.db.notes_of(&globex).await, Some(1));
}

#[actix_web::test]
async fn ids_say_nothing_of_other_tenants_writes() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    let service = service!(app);
    let mut acme_ids = Vec::new();
    for round in 0..2 {
        let (status, note) =
            call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "acme"}));
        assert_eq!(status, StatusCode::CREATED);
        acme_ids.push(uuid::Uuid::parse_str(note["id"].as_str().unwrap()).unwrap());
        if round == 0 {
            for _ in 0..20 {
                let (status, _) = call!(service, post "/api/notes", tenant = "globex", json = json!({"title": "globex"}));
                assert_eq!(status, StatusCode::CREATED);
            }
        }
    }
    // Time-ordered UUIDv7 ids: the order of acme's own notes, and nothing to count.
    assert!(
        acme_ids.iter().all(|id| id.get_version_num() == 7),
        "{acme_ids:?}"
    );
    assert!(acme_ids[0] < acme_ids[1]);
    // No sequence shared by the tenants' tables.
    let client = app_session(&app).await;
    let sequences = try_sql(
        &client,
        "SELECT count(*)::text FROM pg_sequences WHERE schemaname = 'tenancy_data'",
    )
    .await
    .unwrap();
    assert_eq!(sequences.as_deref(), Some("0"));
}

/// The shared tables as `c` (diesel's record of migrations left out), for a `WHERE` to
/// go on.
const SHARED_TABLES: &str = "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE n.nspname = 'tenancy_data' AND c.relkind IN ('r', 'p') \
    AND c.relname <> '__diesel_schema_migrations'";

/// `tenant_id`'s column number in table `rel`.
fn tenant_id_of(rel: &str) -> String {
    format!(
        "(SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = {rel} \
         AND a.attname = 'tenant_id' AND NOT a.attisdropped)"
    )
}

/// What Citus (distributed PostgreSQL) asks of tables distributed by `tenant_id`, checked
/// on every shared table, on plain PostgreSQL: a table added without it fails here, not
/// in a migration on the cluster. Citus is not installed here, so `distribute_by_tenant`
/// answers that it distributed nothing; what it does on Citus is not tested.
#[actix_web::test]
async fn every_shared_table_is_ready_to_be_distributed_by_tenant() {
    let app = spawn_app().await;
    let none = Vec::<Vec<Option<String>>>::new();
    let tables = app
        .db
        .query(&format!("SELECT c.relname {SHARED_TABLES} ORDER BY 1"))
        .await;
    assert!(
        tables.contains(&vec![Some("notes".to_owned())]),
        "{tables:?}"
    );
    let shared = format!("SELECT c.oid {SHARED_TABLES}");

    let rules = [
        (
            "no tenant_id uuid NOT NULL",
            format!(
                "SELECT c.relname {SHARED_TABLES} AND NOT EXISTS (SELECT 1 FROM pg_attribute a \
                 WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
                 AND a.attnotnull AND a.atttypid = 'uuid'::regtype)"
            ),
        ),
        // Citus enforces a unique index (a primary key too) only if it holds the
        // distribution column.
        (
            "unique indexes without tenant_id",
            format!(
                "SELECT i.indexrelid::regclass::text FROM pg_index i \
                 WHERE i.indrelid IN ({shared}) AND i.indisunique AND NOT {} = ANY (i.indkey)",
                tenant_id_of("i.indrelid")
            ),
        ),
        // A foreign key from or to a distributed table must pair the distribution columns.
        (
            "foreign keys not paired on tenant_id",
            format!(
                "SELECT k.conname FROM pg_constraint k WHERE k.contype = 'f' \
                 AND (k.conrelid IN ({shared}) OR k.confrelid IN ({shared})) \
                 AND (array_position(k.conkey, {}) = array_position(k.confkey, {})) \
                 IS NOT TRUE",
                tenant_id_of("k.conrelid"),
                tenant_id_of("k.confrelid")
            ),
        ),
        (
            "no forced Row-Level Security with a policy",
            format!(
                "SELECT c.relname {SHARED_TABLES} AND NOT (c.relrowsecurity \
                 AND c.relforcerowsecurity \
                 AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid))"
            ),
        ),
    ];
    for (broken, sql) in &rules {
        assert_eq!(app.db.query(sql).await, none, "{broken}");
    }

    // Without Citus it distributes nothing; the application role may not call it at all.
    let distributed = "SELECT tenancy_data.distribute_by_tenant('tenancy_data.notes')::text";
    assert_eq!(
        app.db.query(distributed).await,
        vec![vec![Some("false".to_owned())]]
    );
    let session = app_session(&app).await;
    let called = session
        .simple_query("SELECT distribute_by_tenant('notes')")
        .await
        .map_err(|e| e.code().cloned());
    assert_eq!(
        called.err(),
        Some(Some(
            tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
        ))
    );
}

/// The titles of `tenant`'s notes in the shared tables of the other server.
async fn titles_on(other: &OtherServer, tenant: &Tenant) -> Vec<String> {
    let url = format!("{}/{}", other.base_url, other.database);
    let sql = format!(
        "SELECT title FROM tenancy_data.notes WHERE tenant_id = '{}' ORDER BY 1",
        tenant.id
    );
    let rows = query_url(&url, &sql).await.unwrap();
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

    // Both are served by the one service, each from the shared tables of its own server:
    // every row of every answer is the tenant's own.
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
    // Each tenant's rows are on its server, and only there.
    assert_eq!(titles_on(&other, &far).await, ["far-0", "far-1", "far-2"]);
    assert!(titles_on(&other, &near).await.is_empty());
    let here = |tenant: &Tenant| {
        format!(
            "SELECT title FROM tenancy_data.notes WHERE tenant_id = '{}'",
            tenant.id
        )
    };
    assert_eq!(app.db.query(&here(&near)).await.len(), 3);
    assert!(app.db.query(&here(&far)).await.is_empty());
    // The service reaches the other server as the application role.
    let sql = format!(
        "SELECT 1 FROM pg_stat_activity WHERE usename = '{}' AND datname = '{}'",
        app.db.app_role, other.database
    );
    assert!(!query_url(&other.admin_url, &sql).await.unwrap().is_empty());

    // `migrate` reads each server: nothing is pending, on either; shared tables on the
    // other server that lack a migration are seen there, for its tenant.
    let plan = app.tenancy.plan_migrations().await.unwrap();
    assert_eq!((plan.tenants, plan.pending.len()), (2, 0), "{plan:?}");
    let url = format!("{}/{}", other.base_url, other.database);
    let forget = "DELETE FROM tenancy_data.__diesel_schema_migrations \
                  WHERE version = (SELECT max(version) FROM tenancy_data.__diesel_schema_migrations)";
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

    // Destroy deletes its rows on its server; the other tenant keeps its own.
    app.tenancy
        .delete_tenant(&operator(), &far.identifier)
        .await
        .unwrap();
    let (_, plan) = app.tenancy.destroy_plan(&far.identifier).await.unwrap();
    let rows: Vec<(&str, i64)> = (plan.tables.iter())
        .map(|t| (t.table.as_str(), t.rows))
        .collect();
    assert_eq!(rows, [("notes", 3)], "{plan:?}");
    app.tenancy
        .destroy_tenant(&operator(), &far.identifier, "far")
        .await
        .unwrap();
    assert!(titles_on(&other, &far).await.is_empty());
    assert_eq!(app.db.query(&here(&near)).await.len(), 3);
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

    // A tenant registered for the other server and never provisioned there (a process
    // without the owner's URL, or a crash) is completed by `migrate`.
    let half = TenantIdentifier::parse("half").unwrap();
    let server = ServerAddress::parse(&other.address).unwrap();
    let mut conn = app.tenancy.control.get().await.unwrap();
    let registered = registry::insert_or_get(
        &mut conn,
        &half,
        "Half",
        Isolation::Rls,
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
    let service = service!(app);
    let (status, body) =
        call!(service, post "/api/notes", tenant = "half", json = json!({"title": "half-0"}));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(titles_on(&other, &now).await, ["half-0"]);

    // `/health` says how many tenants each server holds.
    let request = actix_web::test::TestRequest::get()
        .uri("/health")
        .to_request();
    let health: serde_json::Value =
        actix_web::test::call_and_read_body_json(&service, request).await;
    let servers = &health["checks"]["servers"];
    assert_eq!(servers[0]["tenants"], 2, "{health}");
    assert_eq!(servers[1]["server"], json!(other.address), "{health}");
    assert_eq!(servers[1]["tenants"], 3, "{health}");
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
    let there: Vec<&Tenant> = (tenants.iter())
        .filter(|t| t.server.as_ref().map(|s| s.as_str()) == Some(other.address.as_str()))
        .collect();
    assert_eq!((tenants.len(), there.len()), (10, 5));
    for tenant in there {
        assert!(!titles_on(&other, tenant).await.is_empty(), "{tenant:?}");
    }
    // The application role went through each server's pooler.
    for (pooler, database) in [(&near, &app.db.name), (&far, &other.database)] {
        assert!(
            pooler.databases_logged_in().contains(database),
            "{database}: {:?}",
            pooler.databases_logged_in()
        );
    }
}

/// With the shared table's policy made to let every row through, and `tenant_id` without
/// its default, the example still serves each tenant its own notes alone and writes its
/// id: every statement names its tenant (`tenant_notes`), which is what lets distributed
/// PostgreSQL (Citus) send it to that tenant's shard alone.
#[actix_web::test]
async fn every_statement_of_the_example_names_its_tenant() {
    let app = spawn_app().await;
    let acme = tenant_with_notes(&app, "acme", 3).await;
    let globex = tenant_with_notes(&app, "globex", 2).await;
    app.db
        .query(
            "ALTER POLICY tenant_isolation ON tenancy_data.notes USING (true) WITH CHECK (true); \
             ALTER TABLE tenancy_data.notes ALTER COLUMN tenant_id DROP DEFAULT",
        )
        .await;
    let of = |tenant: &Tenant| {
        format!(
            "SELECT id FROM tenancy_data.notes WHERE tenant_id = '{}' ORDER BY id",
            tenant.id
        )
    };
    let theirs = app.db.query(&of(&globex)).await[0][0].clone().unwrap();
    let service = service!(app);

    let (status, body) = call!(service, get "/api/notes?limit=100", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let titles: Vec<&str> = (body.as_array().unwrap().iter())
        .map(|note| note["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["acme 2", "acme 1", "acme 0"], "{body}");
    let (status, _) =
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "acme 3"}));
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.db.query(&of(&acme)).await.len(), 4);
    let path = format!("/api/notes/{theirs}");
    let (status, _) = call!(service, get & path, tenant = "acme");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call!(
        service,
        put & path,
        tenant = "acme",
        json = json!({"title": "taken"})
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call!(service, delete & path, tenant = "acme");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.db.query(&of(&globex)).await.len(), 2);

    // The import job's count too.
    let import = ImportNotes {
        notes: vec![Object(NoteInput {
            title: "acme 4".into(),
            body: String::new(),
        })],
    };
    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    let result = import.run(&mut conn).await.unwrap();
    conn.finish(true).await.unwrap();
    assert_eq!(result, json!({"imported": 1, "notes": 5}));
}
