//! Changing a hybrid tenant's tier (`tenant move --isolation`), rls to schema to
//! database and back: under writes from two replicas no acknowledged write is lost, no
//! answer holds another tenant's row and the tenant is never answered from nowhere; the
//! other tenants of the shared tables lose nothing; a request that reaches a place the
//! tenant left is refused; an interrupted move is finished by running it again. The same
//! holds behind a pooler in transaction mode.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use futures_util::future::join;
use serde_json::json;

use crate::helpers::{
    TestApp, TestDatabase, binary, operator, query_url, server_url, spawn_app, with_database,
};
use crate::moves::until;
use crate::pgbouncer::PgBouncer;
use svc::domain::{Isolation, Maintenance, Tenant, TenantIdentifier, TenantStatus};
use svc::tenancy::isolation::{PlaceError, ServerAddress};
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
    let rows = app.db.query(&sql).await;
    rows.into_iter()
        .filter_map(|mut row| row.remove(0))
        .collect()
}

/// The titles of `tenant`'s notes in its own database.
async fn titles_in_database(app: &TestApp, tenant: &Tenant) -> Vec<String> {
    let name = format!("{}{}", app.db.tenant_database_prefix, tenant.identifier);
    let url = with_database(&app.db.server, &name);
    let rows = query_url(&url, "SELECT title FROM notes").await.unwrap();
    rows.into_iter()
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

/// Checks that what a replica that has not heard of `tenant`'s move would send to the
/// place it left (`search_path`, with its `app.tenant_id`) is refused, as the application
/// role: a read, an insert, a delete.
async fn assert_refused_at(app: &TestApp, tenant: &Tenant, search_path: &str) {
    for sql in [
        "SELECT count(*) FROM notes",
        "INSERT INTO notes (title) VALUES ('stale')",
        "DELETE FROM notes",
    ] {
        let scoped = format!(
            "SELECT set_config('app.tenant_id', '{}', false), \
               set_config('search_path', '{search_path}', false); {sql}",
            tenant.id
        );
        let error = query_url(&app.db.app_url, &scoped).await.unwrap_err();
        let message = error.as_db_error().map(|e| e.message().to_owned());
        assert_eq!(
            message.as_deref(),
            Some("tenant moved to another tier: retry"),
            "{sql}"
        );
    }
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
async fn promoted_rls_to_schema_to_database_under_writes_from_two_replicas() {
    let up = [Isolation::Schema, Isolation::Database];
    changes_tier_under_writes_from_two_replicas(spawn_app().await, Isolation::Rls, up).await;
}

#[actix_web::test]
async fn demoted_database_to_schema_to_rls_under_writes_from_two_replicas() {
    let down = [Isolation::Schema, Isolation::Rls];
    changes_tier_under_writes_from_two_replicas(spawn_app().await, Isolation::Database, down).await;
}

#[actix_web::test]
async fn promoted_and_demoted_behind_a_transaction_pooler_under_writes_from_two_replicas() {
    let connections = crate::pooler::SERVER_CONNECTIONS;
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", connections) else {
        return;
    };
    let behind =
        || async { crate::pooler::spawn_behind(&pooler, TestDatabase::create().await, &[]).await };
    let up = [Isolation::Schema, Isolation::Database];
    changes_tier_under_writes_from_two_replicas(behind().await, Isolation::Rls, up).await;
    let down = [Isolation::Schema, Isolation::Rls];
    changes_tier_under_writes_from_two_replicas(behind().await, Isolation::Database, down).await;
}

/// acme, in tier `from`, changes tier twice (`path`) while both replicas of `a` write to it
/// and read every tenant; globex shares the shared tables, initech has a schema.
async fn changes_tier_under_writes_from_two_replicas(
    a: TestApp,
    from: Isolation,
    path: [Isolation; 2],
) {
    let b = svc::startup::prepare(&a.settings).await.unwrap();
    let service_a = service!(a);
    let service_b =
        actix_web::test::init_service(crate::helpers::app(b.clone(), &a.settings)).await;
    let acme = create(&a, "acme", from).await;
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
        // Writes under way before, during and after each move.
        let mut moves = Vec::new();
        for tier in path {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let moved = a
                .tenancy
                .change_tier(&operator(), &acme.identifier, tier, None, |step| {
                    eprintln!("move: {step}")
                })
                .await
                .unwrap();
            let rows: u64 = moved.tables.iter().map(|t| t.rows).sum();
            eprintln!(
                "to {tier}: {rows} rows copied, read-only for {} ms",
                moved.read_only_ms
            );
            assert_eq!(moved.isolation, tier);
            assert!(rows >= 200, "{moved:?}");
            moves.push(rows);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        done.set(true);
        moves
    };
    let (moves, ()) = join(moving, load).await;
    eprintln!(
        "{} writes acknowledged, {} refused, {} answers read",
        acknowledged.borrow().len(),
        refused.get(),
        answers.get()
    );
    assert!(moves[1] >= moves[0], "{moves:?}");

    // Every acknowledged write is where the tenant is now, with the seed, and nothing
    // else; nothing of it is left anywhere else.
    let last = path[1];
    let copied = titles_in(&a, &acme, last).await;
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
    assert_left_nothing(&a, &acme, last).await;
    // The others lost nothing.
    assert_eq!(shared_rows(&a, &globex).await, 20 + globex_written.get());
    assert_eq!(a.db.notes_of(&initech).await, Some(20));

    // Both replicas serve acme from its new place.
    for (replica, service) in [("a", &service_a), ("b", &service_b)] {
        let title = format!("acme-after-{replica}");
        let (status, body) =
            call!(service, post "/api/notes", tenant = "acme", json = json!({"title": title}));
        assert_eq!(status, StatusCode::CREATED, "replica {replica}: {body}");
        assert!(titles_in(&a, &acme, last).await.contains(&title));
    }
    let now = a.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert_eq!((now.isolation, now.maintenance), (last, Maintenance::Off));
    let history = a.tenancy.history(&acme.identifier, 10, None).await.unwrap();
    let moved = history
        .iter()
        .filter(|e| e.operation == "move" && e.result == "ok");
    assert_eq!(moved.count(), 2, "{history:?}");

    if from == Isolation::Rls {
        // A replica that had not heard would read or write through the shared tables:
        // refused.
        assert_refused_at(&a, &acme, "tenancy_data").await;
        assert_eq!(shared_rows(&a, &acme).await, 0);
    }
}

/// The titles of `tenant`'s notes in tier `tier`.
async fn titles_in(app: &TestApp, tenant: &Tenant, tier: Isolation) -> Vec<String> {
    match tier {
        Isolation::Database => titles_in_database(app, tenant).await,
        Isolation::Schema => titles_in_schema(app, tenant).await,
        Isolation::Rls => {
            let sql = format!(
                "SELECT title FROM tenancy_data.notes WHERE tenant_id = '{}'",
                tenant.id
            );
            let rows = app.db.query(&sql).await;
            rows.into_iter()
                .filter_map(|mut row| row.remove(0))
                .collect()
        }
    }
}

/// Checks that `tenant`, in tier `tier`, has nothing in the other tiers: no row in the
/// shared tables, no schema, no database.
async fn assert_left_nothing(app: &TestApp, tenant: &Tenant, tier: Isolation) {
    if tier != Isolation::Rls {
        assert_eq!(shared_rows(app, tenant).await, 0);
    }
    let schema = format!("tenant_{}", tenant.identifier);
    assert_eq!(
        app.db.schemas().await.contains(&schema),
        tier == Isolation::Schema
    );
    let database = format!("{}{}", app.db.tenant_database_prefix, tenant.identifier);
    let found = format!("SELECT 1 FROM pg_database WHERE datname = '{database}'");
    assert_eq!(
        !query_url(&server_url(), &found).await.unwrap().is_empty(),
        tier == Isolation::Database
    );
    let placed = format!(
        "SELECT 1 FROM tenancy.tenant_databases WHERE tenant_id = '{}'",
        tenant.id
    );
    assert_eq!(
        !app.db.query(&placed).await.is_empty(),
        tier == Isolation::Database
    );
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

/// Runs `tenant`'s change to `tier` up to its switch and no further, as a move stopped
/// right there leaves it: read-only, served from `tier`, the old place still there. The
/// rows copied.
async fn switch_only(app: &TestApp, tenant: &Tenant, tier: Isolation) -> u64 {
    let (hybrid, ctx) = (app.tenancy.strategy(), app.tenancy.context());
    let target = hybrid.prepare_tier(ctx, tenant, tier, None).await.unwrap();
    let moving = format!(
        "UPDATE tenancy.tenants SET maintenance = 'moving' WHERE id = '{}'",
        tenant.id
    );
    app.db.query(&moving).await;
    let copied = hybrid
        .switch_tier(ctx, tenant, &target, Duration::from_secs(5))
        .await
        .unwrap();
    copied.iter().map(|table| table.rows).sum()
}

/// Runs the command that moves `tenant` to `tier` once its switch is done (see
/// [`switch_only`]): it resumes, says `dropped`, and leaves the tenant taking writes in
/// `tier`, with nothing anywhere else. The tenant as it is then.
async fn finish_by_command(
    app: &TestApp,
    tenant: &Tenant,
    tier: Isolation,
    dropped: &str,
) -> Tenant {
    let (ok, stdout, stderr) = move_to_tier(app, tenant.identifier.as_str(), tier.as_str());
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stderr.contains("resuming") && stderr.contains(dropped),
        "{stderr}"
    );
    let now = app.tenancy.get_tenant(&tenant.identifier).await.unwrap();
    assert_eq!((now.isolation, now.maintenance), (tier, Maintenance::Off));
    assert_left_nothing(app, &now, tier).await;
    now
}

/// Asks for acme's notes until they are `count` (at most a second: what the service takes
/// to hear of a change made by another process).
macro_rules! serves_within_a_second {
    ($service:expr, $count:expr) => {
        let started = Instant::now();
        loop {
            let (status, body) = call!($service, get "/api/notes?limit=100", tenant = "acme");
            if status == StatusCode::OK {
                assert_eq!(body.as_array().unwrap().len(), $count, "{body}");
                break;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(started.elapsed() < Duration::from_secs(1), "{body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
}

#[actix_web::test]
async fn the_command_moves_a_tenant_up_and_finishes_a_move_stopped_after_its_switch() {
    let app = spawn_app().await;
    let service = service!(app);
    let acme = create(&app, "acme", Isolation::Rls).await;
    seed!(service, "acme", 30);

    let (ok, stdout, stderr) = move_to_tier(&app, "acme", "schema");
    assert!(ok, "{stdout}{stderr}");
    let expected = "tenant acme moved to tier schema: 30 rows in 1 tables copied; read-only for";
    assert!(stdout.contains(expected), "{stdout}");
    for step in [
        "read-only: moving its data",
        "switched: served from tier schema",
    ] {
        assert!(stderr.contains(step), "{step}: {stderr}");
    }
    assert_eq!(titles_in_schema(&app, &acme).await.len(), 30);
    assert_eq!(shared_rows(&app, &acme).await, 0);
    // The service was blocked while the command ran: it hears of the move now.
    serves_within_a_second!(service, 30);

    // Stopped right after its switch to a database: the old schema refuses the tenant,
    // the tenant is read-only; running the move again finishes it.
    let acme = app.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert_eq!(switch_only(&app, &acme, Isolation::Database).await, 30);
    assert_refused_at(&app, &acme, "tenant_acme").await;
    assert_eq!(titles_in_schema(&app, &acme).await.len(), 30);
    let acme = finish_by_command(&app, &acme, Isolation::Database, "dropped its old schema").await;
    assert_eq!(titles_in_database(&app, &acme).await.len(), 30);
    serves_within_a_second!(service, 30);
}

#[actix_web::test]
async fn the_command_moves_a_tenant_down_and_finishes_moves_stopped_after_their_switch() {
    let app = spawn_app().await;
    let service = service!(app);
    let acme = create(&app, "acme", Isolation::Database).await;
    seed!(service, "acme", 30);

    // Stopped right after its switch to a schema: the database it left takes no session
    // any more (a replica that had not heard gets an outage to retry), the tenant is
    // read-only; running the move again finishes it.
    assert_eq!(switch_only(&app, &acme, Isolation::Schema).await, 30);
    let name = format!("{}acme", app.db.tenant_database_prefix);
    let old = with_database(&app.db.server, &name);
    let refused = query_url(&old, "SELECT count(*) FROM notes")
        .await
        .unwrap_err();
    let refused = refused.as_db_error().map(|e| e.message().to_owned());
    assert_eq!(
        refused.as_deref(),
        Some(format!("database \"{name}\" is not currently accepting connections").as_str())
    );
    let acme = finish_by_command(&app, &acme, Isolation::Schema, "dropped its old database").await;
    assert_eq!(titles_in_schema(&app, &acme).await.len(), 30);
    serves_within_a_second!(service, 30);

    // Stopped right after its switch to the shared tables: its schema refuses it.
    assert_eq!(switch_only(&app, &acme, Isolation::Rls).await, 30);
    assert_refused_at(&app, &acme, "tenant_acme").await;
    let acme = finish_by_command(&app, &acme, Isolation::Rls, "dropped its old schema").await;
    serves_within_a_second!(service, 30);
    let (status, body) =
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "acme-after"}));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut titles = titles_in(&app, &acme, Isolation::Rls).await;
    titles.sort();
    let mut expected: Vec<String> = (0..30).map(|n| format!("acme-seed-{n}")).collect();
    expected.push("acme-after".into());
    expected.sort();
    assert_eq!(titles, expected);

    // And up again, by the command, every row.
    let (ok, stdout, stderr) = move_to_tier(&app, "acme", "schema");
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(titles_in_schema(&app, &acme).await.len(), 31);
    assert_left_nothing(&app, &acme, Isolation::Schema).await;
}

#[actix_web::test]
async fn a_tenant_whose_change_of_tier_stopped_partway_is_deleted_only_once_it_is_finished() {
    let app = spawn_app().await;
    let service = service!(app);
    // Stopped once the tenant took writes again, before the place it left was dropped: a
    // schema left for a database, a database left for a schema.
    for (name, from, to, left) in [
        (
            "upward",
            Isolation::Schema,
            Isolation::Database,
            "its old schema \"tenant_upward\" is still there",
        ),
        (
            "downward",
            Isolation::Database,
            Isolation::Schema,
            "its old database on the default server is still there",
        ),
    ] {
        let tenant = create(&app, name, from).await;
        seed!(service, name, 5);
        assert_eq!(switch_only(&app, &tenant, to).await, 5);
        app.db
            .query(&format!(
                "UPDATE tenancy.tenants SET maintenance = 'off' WHERE id = '{}'",
                tenant.id
            ))
            .await;
        until(&app, name, |t| t.maintenance == Maintenance::Off).await;
        let refused = app
            .tenancy
            .delete_tenant(&operator(), &tenant.identifier)
            .await
            .unwrap_err();
        let refused_until_finished = |error: &LifecycleError, then: &str| match error {
            LifecycleError::Conflict(why) => {
                assert!(why.contains(left), "{why}");
                assert!(
                    why.contains("finish the move") && why.contains(then),
                    "{why}"
                );
            }
            other => panic!("{name}: {other:?}"),
        };
        refused_until_finished(&refused, "then delete it");

        // Deleted all the same (a delete that raced the move): not destroyed, but the move
        // is still finished by the command, and then it is.
        app.db
            .query(&format!(
                "UPDATE tenancy.tenants SET status = 'deleted' WHERE id = '{}'",
                tenant.id
            ))
            .await;
        until(&app, name, |t| t.status == TenantStatus::Deleted).await;
        let refused = app
            .tenancy
            .destroy_tenant(&operator(), &tenant.identifier, name)
            .await
            .unwrap_err();
        refused_until_finished(&refused, "then destroy it");
        // Only that move is finished: no move to another server starts.
        let elsewhere = ServerAddress::parse("elsewhere.invalid:5432").unwrap();
        let refused = app
            .tenancy
            .move_tenant(&operator(), &tenant.identifier, Some(elsewhere), |_| {})
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("is deleted"), "{refused}");
        let (ok, stdout, stderr) = move_to_tier(&app, name, to.as_str());
        assert!(ok && stderr.contains("resuming"), "{stdout}{stderr}");
        app.tenancy
            .destroy_tenant(&operator(), &tenant.identifier, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Nothing of it is left anywhere.
        assert!(!app.db.schemas().await.contains(&format!("tenant_{name}")));
        let database = format!("{}{name}", app.db.tenant_database_prefix);
        let found = format!("SELECT 1 FROM pg_database WHERE datname = '{database}'");
        assert!(query_url(&server_url(), &found).await.unwrap().is_empty());
        let placed = format!(
            "SELECT 1 FROM tenancy.tenant_databases WHERE tenant_id = '{}'",
            tenant.id
        );
        assert!(app.db.query(&placed).await.is_empty());
    }
    // A deleted tenant with no move to finish changes tier no more.
    let tenant = create(&app, "still", Isolation::Rls).await;
    app.tenancy
        .delete_tenant(&operator(), &tenant.identifier)
        .await
        .unwrap();
    let (ok, _, stderr) = move_to_tier(&app, "still", "schema");
    assert!(!ok && stderr.contains("is deleted"), "{stderr}");
}

#[actix_web::test]
async fn a_move_killed_before_its_switch_changes_nothing_until_run_again() {
    let app = spawn_app().await;
    let service = service!(app);
    create(&app, "acme", Isolation::Rls).await;
    seed!(service, "acme", 30);
    for tier in ["schema", "database", "schema", "rls"] {
        // The move waits for this lock of acme's notes (as for a write under way): killed
        // there, after its new place was made and the tenant made read-only.
        let acme = app
            .tenancy
            .get_tenant(&TenantIdentifier::parse("acme").unwrap())
            .await
            .unwrap();
        let lock = app.db.lock_notes(&acme).await;
        let holder: i32 = lock
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let mut killed = Command::new(binary())
            .args(["tenant", "move", "acme", "--isolation", tier])
            .env_clear()
            .envs(app.db.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        super::moves::wait_blocked_by(holder).await;
        killed.kill().unwrap(); // SIGKILL: no clean-up of any kind
        killed.wait().unwrap();
        drop(lock);
        // Where it was, read-only: every row served, writes refused.
        let now = app.tenancy.get_tenant(&acme.identifier).await.unwrap();
        assert_eq!(
            (now.isolation, now.maintenance),
            (acme.isolation, Maintenance::Moving)
        );
        serves_within_a_second!(service, 30);
        let (status, _) = call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "acme-refused"}));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        // The same command moves it, every row.
        let (ok, stdout, stderr) = move_to_tier(&app, "acme", tier);
        assert!(ok, "{stdout}{stderr}");
        assert!(stderr.contains("copied notes: 30 rows"), "{stderr}");
        let now = app.tenancy.get_tenant(&acme.identifier).await.unwrap();
        assert_eq!(
            (now.isolation.as_str(), now.maintenance),
            (tier, Maintenance::Off)
        );
        serves_within_a_second!(service, 30);
    }
    let acme = app
        .tenancy
        .get_tenant(&TenantIdentifier::parse("acme").unwrap())
        .await
        .unwrap();
    let mut titles = titles_in(&app, &acme, Isolation::Rls).await;
    titles.sort();
    let mut seeded: Vec<String> = (0..30).map(|n| format!("acme-seed-{n}")).collect();
    seeded.sort();
    assert_eq!(titles, seeded);
    assert_left_nothing(&app, &acme, Isolation::Rls).await;
}

#[actix_web::test]
async fn a_switch_that_waits_in_vain_for_the_tenant_s_tables_is_given_up_and_changes_nothing() {
    let app = spawn_app().await;
    let service = service!(app);
    let acme = create(&app, "acme", Isolation::Rls).await;
    seed!(service, "acme", 3);
    let (hybrid, ctx) = (app.tenancy.strategy(), app.tenancy.context());
    let target = hybrid
        .prepare_tier(ctx, &acme, Isolation::Schema, None)
        .await
        .unwrap();
    let lock = app.db.lock_notes(&acme).await;
    let waited = hybrid
        .switch_tier(ctx, &acme, &target, Duration::from_millis(300))
        .await;
    match waited {
        Err(PlaceError::Busy(message)) => {
            assert!(message.contains("did not end within 0.3 s"), "{message}");
            assert!(message.contains("changed nothing"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    drop(lock);
    hybrid
        .abandon_tier(ctx, &acme, Isolation::Schema)
        .await
        .unwrap();
    let now = app.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert_eq!(now.isolation, Isolation::Rls);
    assert_left_nothing(&app, &acme, Isolation::Rls).await;
    assert_eq!(titles_in(&app, &acme, Isolation::Rls).await.len(), 3);
}

#[actix_web::test]
async fn a_change_of_tier_is_refused_where_it_cannot_be_done_and_changes_nothing() {
    let app = spawn_app().await;
    let shared = create(&app, "shared", Isolation::Rls).await;
    let premium = create(&app, "premium", Isolation::Schema).await;
    let biggest = create(&app, "biggest", Isolation::Database).await;
    for (tenant, tier, why) in [
        (&premium, Isolation::Schema, "in tier schema already"),
        (&biggest, Isolation::Rls, "one tier at a time"),
        (&shared, Isolation::Database, "one tier at a time"),
    ] {
        let changed = app
            .tenancy
            .change_tier(&operator(), &tenant.identifier, tier, None, |_| {})
            .await;
        match changed {
            Err(LifecycleError::Conflict(message)) => assert!(message.contains(why), "{message}"),
            other => panic!("{} to {tier}: {other:?}", tenant.identifier),
        }
        let now = app.tenancy.get_tenant(&tenant.identifier).await.unwrap();
        assert_eq!(
            (now.isolation, now.maintenance),
            (tenant.isolation, Maintenance::Off)
        );
    }
    // Nothing was made for the tenants that stayed where they were.
    let schemas = app.db.schemas().await;
    assert!(!schemas.contains(&"tenant_shared".to_string()));
    assert!(!schemas.contains(&"tenant_biggest".to_string()));
    let (ok, _, stderr) = move_to_tier(&app, "shared", "tier3");
    assert!(!ok);
    assert!(stderr.contains("--isolation"), "{stderr}");

    // A schema of the tenant's name that holds rows no move left there is never dropped:
    // not by a move that would go there, nor by one asked for the tier it is in.
    let squatted = create(&app, "squatted", Isolation::Rls).await;
    app.db
        .query(
            "CREATE SCHEMA tenant_squatted; CREATE TABLE tenant_squatted.notes (title text); \
             INSERT INTO tenant_squatted.notes VALUES ('kept')",
        )
        .await;
    for tier in [Isolation::Schema, Isolation::Rls] {
        let changed = app
            .tenancy
            .change_tier(&operator(), &squatted.identifier, tier, None, |_| {})
            .await;
        match changed {
            Err(LifecycleError::Conflict(message)) => {
                assert!(message.contains("holds rows"), "to {tier}: {message}")
            }
            other => panic!("to {tier}: {other:?}"),
        }
        let kept = app
            .db
            .query("SELECT title FROM tenant_squatted.notes")
            .await;
        assert_eq!(kept, [[Some("kept".to_string())]]);
        let now = app.tenancy.get_tenant(&squatted.identifier).await.unwrap();
        assert_eq!(
            (now.isolation, now.maintenance),
            (Isolation::Rls, Maintenance::Off)
        );
    }
    app.db.query("DROP SCHEMA tenant_squatted CASCADE").await;
}
{%- if admin_api %}

#[actix_web::test]
async fn the_admin_api_moves_a_tenant_up_to_a_database_on_another_server_and_back() {
    let Some((app, other)) = crate::servers::spawn_with_other_server().await else {
        return;
    };
    let service = service!(app);
    let acme = create(&app, "acme", Isolation::Rls).await;
    seed!(service, "acme", 5);
    let post = |body: serde_json::Value| {
        actix_web::test::TestRequest::post()
            .uri("/admin/tenants/acme/move")
            .insert_header((
                "Authorization",
                format!("Bearer {}", crate::helpers::ADMIN_TOKEN),
            ))
            .set_json(body)
            .to_request()
    };
    let service = &service;
    let call = |body| async move { actix_web::test::call_service(service, post(body)).await };
    // A server for a tier that has none is refused; so is a tier skipped.
    let refused = call(json!({"isolation": "schema", "to": other.address})).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused = call(json!({"isolation": "database"})).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);

    let moved = call(json!({"isolation": "schema"})).await;
    assert_eq!(moved.status(), StatusCode::OK);
    let body: serde_json::Value = actix_web::test::read_body_json(moved).await;
    assert_eq!(body["isolation"], "schema", "{body}");
    assert_eq!(body["tables"], json!([{"table": "notes", "rows": 5}]));
    assert!(body["read_only_ms"].as_u64().is_some(), "{body}");

    let moved = call(json!({"isolation": "database", "to": other.address})).await;
    assert_eq!(moved.status(), StatusCode::OK);
    let body: serde_json::Value = actix_web::test::read_body_json(moved).await;
    assert_eq!(body["isolation"], "database", "{body}");
    assert_eq!(body["to"], json!(other.address), "{body}");
    assert_eq!(body["tables"], json!([{"table": "notes", "rows": 5}]));
    let name = format!("{}acme", app.db.tenant_database_prefix);
    assert!(other.has_database(&name).await);
    // The tenant says where it is now: the server of its database.
    let server = async || {
        app.tenancy
            .get_tenant(&acme.identifier)
            .await
            .unwrap()
            .server
    };
    assert_eq!(
        server().await.map(String::from),
        Some(other.address.clone())
    );
    let again = call(json!({"isolation": "database"})).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let (status, body) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(
        (status, body.as_array().map(Vec::len)),
        (StatusCode::OK, Some(5))
    );

    // And back down: its database on the other server is dropped.
    let moved = call(json!({"isolation": "schema"})).await;
    assert_eq!(moved.status(), StatusCode::OK);
    let body: serde_json::Value = actix_web::test::read_body_json(moved).await;
    assert_eq!(body["isolation"], "schema", "{body}");
    assert_eq!(body["tables"], json!([{"table": "notes", "rows": 5}]));
    assert!(!other.has_database(&name).await);
    assert_eq!(server().await, None);
    let (status, body) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(
        (status, body.as_array().map(Vec::len)),
        (StatusCode::OK, Some(5))
    );
    let history = app
        .tenancy
        .history(&acme.identifier, 10, None)
        .await
        .unwrap();
    let results: Vec<&str> = history
        .iter()
        .filter(|e| e.operation == "move")
        .map(|e| e.result.as_str())
        .collect();
    assert_eq!(
        results,
        ["ok", "refused", "ok", "ok", "refused", "refused"],
        "{history:?}"
    );
}
{%- endif %}
