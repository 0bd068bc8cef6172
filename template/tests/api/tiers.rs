//! Changing a hybrid tenant's tier (`tenant move --isolation schema`): under writes from
//! two replicas no acknowledged write is lost, no answer holds another tenant's row and
//! the tenant is never answered from nowhere; the other tenants of the shared tables
//! lose nothing; a request that reaches the shared tables after the switch is refused;
//! an interrupted move is finished by running it again.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use futures_util::future::join;
use serde_json::json;

use crate::helpers::{TestApp, binary, operator, query_url, spawn_app};
use svc::domain::{Isolation, Maintenance, Tenant, TenantIdentifier};
use svc::tenancy::lifecycle::{LifecycleError, NewTenant};

async fn create(app: &TestApp, name: &str, isolation: Isolation) -> Tenant {
    app.tenancy
        .create_tenant(
            &operator(),
            NewTenant {
                isolation: Some(isolation),
                ..NewTenant::new(TenantIdentifier::parse(name).unwrap(), name)
            },
        )
        .await
        .unwrap()
}

/// The titles of `tenant`'s notes in its schema, read as the owner.
async fn titles_in_schema(app: &TestApp, tenant: &Tenant) -> Vec<String> {
    let sql = format!("SELECT title FROM \"tenant_{}\".notes", tenant.identifier);
    app.db
        .query(&sql)
        .await
        .into_iter()
        .filter_map(|mut row| row.remove(0))
        .collect()
}

/// How many rows `tenant` has in the shared tables (read as the owner, a superuser here,
/// whom Row-Level Security does not restrict).
async fn shared_rows(app: &TestApp, tenant: &Tenant) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM tenancy_data.notes WHERE tenant_id = '{}'",
        tenant.id
    );
    app.db.query(&sql).await[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// Writes `$count` notes titled `<tenant>-seed-<n>` through `$service`.
macro_rules! seed {
    ($service:expr, $tenant:expr, $count:expr) => {
        for n in 0..$count {
            let title = format!("{}-seed-{n}", $tenant);
            let (status, body) =
                call!($service, post "/api/notes", tenant = $tenant, json = json!({"title": title}));
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    };
}

#[actix_web::test]
async fn a_tenant_moved_from_rls_to_schema_under_writes_from_two_replicas_keeps_every_acknowledged_write()
 {
    let a = spawn_app().await;
    let b = svc::startup::prepare(&a.settings).await.unwrap();
    let service_a = service!(a);
    let service_b =
        actix_web::test::init_service(crate::helpers::app(b.clone(), &a.settings)).await;
    let acme = create(&a, "acme", Isolation::Rls).await;
    let globex = create(&a, "globex", Isolation::Rls).await;
    let initech = create(&a, "initech", Isolation::Schema).await;
    seed!(service_a, "acme", 200);
    seed!(service_a, "globex", 20);
    seed!(service_a, "initech", 20);

    let done = Cell::new(false);
    let acknowledged = RefCell::new(Vec::<String>::new());
    let globex_written = Cell::new(0);
    let refused = Cell::new(0u32);
    let answers = Cell::new(0u32);
    let load = async {
        let mut n = 0;
        while !done.get() {
            for (replica, service) in [("a", &service_a), ("b", &service_b)] {
                n += 1;
                let title = format!("acme-{replica}-{n}");
                let (status, body) = call!(service, post "/api/notes", tenant = "acme", json = json!({"title": title}));
                match status {
                    StatusCode::CREATED => acknowledged.borrow_mut().push(title),
                    // Read-only while it moves, or a write to the tier it left.
                    StatusCode::SERVICE_UNAVAILABLE => refused.set(refused.get() + 1),
                    other => panic!("a write answered {other}: {body}"),
                }
                // The shared tables' other tenants wait for the copy, and are never refused.
                let title = format!("globex-{replica}-{n}");
                let (status, body) = call!(service, post "/api/notes", tenant = "globex", json = json!({"title": title}));
                assert_eq!(status, StatusCode::CREATED, "{body}");
                globex_written.set(globex_written.get() + 1);
                // Every row of every answer is the tenant's own, and acme (200 notes and
                // more) is answered from one place or the other, never from nowhere.
                for (tenant, prefix) in [
                    ("acme", "acme-"),
                    ("globex", "globex-"),
                    ("initech", "initech-"),
                ] {
                    let (status, body) =
                        call!(service, get "/api/notes?limit=100", tenant = tenant);
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        continue;
                    }
                    assert_eq!(status, StatusCode::OK, "{body}");
                    answers.set(answers.get() + 1);
                    let notes = body.as_array().unwrap();
                    if tenant == "acme" {
                        assert_eq!(
                            notes.len(),
                            100,
                            "replica {replica} answered acme {notes:?}"
                        );
                    }
                    for note in notes {
                        let title = note["title"].as_str().unwrap();
                        assert!(title.starts_with(prefix), "{tenant} was answered {note}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let moving = async {
        // Writes under way before, during and after.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let moved = a
            .tenancy
            .change_tier(&operator(), &acme.identifier, Isolation::Schema, |step| {
                eprintln!("move: {step}")
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        done.set(true);
        moved
    };
    let (moved, ()) = join(moving, load).await;
    eprintln!(
        "moved {:?} (read-only for {} ms); {} writes acknowledged, {} refused, {} answers read",
        moved.tables,
        moved.read_only_ms,
        acknowledged.borrow().len(),
        refused.get(),
        answers.get()
    );
    assert_eq!(moved.isolation, Isolation::Schema);
    assert!(
        moved
            .tables
            .iter()
            .any(|t| t.table == "notes" && t.rows >= 200)
    );

    // Every acknowledged write is in the tenant's schema, with the seed, and nothing else;
    // nothing of it is left in the shared tables.
    let copied = titles_in_schema(&a, &acme).await;
    let copied_set: HashSet<&String> = copied.iter().collect();
    assert_eq!(copied.len(), copied_set.len(), "a row copied twice");
    let acknowledged = acknowledged.take();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|t| !copied_set.contains(t))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(copied.len(), 200 + acknowledged.len());
    assert!(copied.iter().all(|t| t.starts_with("acme-")));
    assert_eq!(shared_rows(&a, &acme).await, 0);
    // The others lost nothing.
    assert_eq!(shared_rows(&a, &globex).await, 20 + globex_written.get());
    assert_eq!(a.db.notes_of(&initech).await, Some(20));

    // Both replicas serve acme from its schema.
    for (replica, service) in [("a", &service_a), ("b", &service_b)] {
        let title = format!("acme-after-{replica}");
        let (status, body) =
            call!(service, post "/api/notes", tenant = "acme", json = json!({"title": title}));
        assert_eq!(status, StatusCode::CREATED, "replica {replica}: {body}");
        assert!(titles_in_schema(&a, &acme).await.contains(&title));
    }
    let now = a.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert_eq!(
        (now.isolation, now.maintenance),
        (Isolation::Schema, Maintenance::Off)
    );
    let history = a.tenancy.history(&acme.identifier, 5, None).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.operation == "move" && e.result == "ok"),
        "{history:?}"
    );

    // A replica that had not heard would read or write through the shared tables: refused.
    for stale in [
        "SELECT count(*) FROM tenancy_data.notes",
        "INSERT INTO tenancy_data.notes (title) VALUES ('acme-stale')",
    ] {
        let sql = format!(
            "SELECT set_config('app.tenant_id', '{}', false); {stale}",
            acme.id
        );
        let error = query_url(&a.db.app_url, &sql).await.unwrap_err();
        let error = error.as_db_error().map(|e| e.message().to_owned());
        assert_eq!(
            error.as_deref(),
            Some("tenant moved to another tier: retry"),
            "{stale}"
        );
    }
    assert_eq!(shared_rows(&a, &acme).await, 0);
}

/// `tenant move <identifier> --isolation <tier>`, run by the real binary: its status,
/// stdout and stderr.
fn move_to_tier(app: &TestApp, identifier: &str, tier: &str) -> (bool, String, String) {
    let output = Command::new(binary())
        .args(["tenant", "move", identifier, "--isolation", tier])
        .env_clear()
        .envs(app.db.env())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn the_command_moves_a_tenant_to_a_schema_and_finishes_a_move_interrupted_after_its_switch() {
    let app = spawn_app().await;
    let service = service!(app);
    let acme = create(&app, "acme", Isolation::Rls).await;
    seed!(service, "acme", 30);

    let (ok, stdout, stderr) = move_to_tier(&app, "acme", "schema");
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "tenant acme moved to tier schema: 30 rows in 1 tables copied; read-only for"
        ),
        "{stdout}"
    );
    for step in [
        "read-only: moving its rows",
        "switched: served from tier schema",
    ] {
        assert!(stderr.contains(step), "{step}: {stderr}");
    }
    assert_eq!(titles_in_schema(&app, &acme).await.len(), 30);
    assert_eq!(shared_rows(&app, &acme).await, 0);
    // The service hears of the move (it was blocked while the command ran).
    let started = Instant::now();
    loop {
        let (status, body) = call!(service, get "/api/notes?limit=100", tenant = "acme");
        if status == StatusCode::OK {
            assert_eq!(body.as_array().unwrap().len(), 30, "{body}");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(started.elapsed() < Duration::from_secs(1), "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stopped after its switch, still read-only: running it again ends that.
    app.db
        .query(&format!(
            "UPDATE tenancy.tenants SET maintenance = 'moving' WHERE id = '{}'",
            acme.id
        ))
        .await;
    let (ok, stdout, stderr) = move_to_tier(&app, "acme", "schema");
    assert!(ok, "{stdout}{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    let now = app.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert_eq!(
        (now.isolation, now.maintenance),
        (Isolation::Schema, Maintenance::Off)
    );
    assert_eq!(titles_in_schema(&app, &acme).await.len(), 30);
}

#[actix_web::test]
async fn a_change_of_tier_is_refused_where_it_cannot_be_done_and_changes_nothing() {
    let app = spawn_app().await;
    let shared = create(&app, "shared", Isolation::Rls).await;
    let premium = create(&app, "premium", Isolation::Schema).await;
    for (tenant, tier, why) in [
        (&premium, Isolation::Schema, "in tier schema already"),
        (&premium, Isolation::Rls, "only a move from rls to schema"),
        (
            &shared,
            Isolation::Database,
            "only a move from rls to schema",
        ),
    ] {
        match app
            .tenancy
            .change_tier(&operator(), &tenant.identifier, tier, |_| {})
            .await
        {
            Err(LifecycleError::Conflict(message)) => assert!(message.contains(why), "{message}"),
            other => panic!("{} to {tier}: {other:?}", tenant.identifier),
        }
        let now = app.tenancy.get_tenant(&tenant.identifier).await.unwrap();
        assert_eq!(
            (now.isolation, now.maintenance),
            (tenant.isolation, Maintenance::Off)
        );
    }
    // No schema was left behind for the tenant that stayed in the shared tables.
    assert!(
        !app.db
            .schemas()
            .await
            .contains(&"tenant_shared".to_string())
    );
    let (ok, _, stderr) = move_to_tier(&app, "shared", "tier3");
    assert!(!ok);
    assert!(stderr.contains("--isolation"), "{stderr}");
}
