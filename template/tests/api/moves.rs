//! Moving a tenant's {% if isolation == "schema" %}schema{% elsif isolation == "rls" %}rows{% else %}database{% endif %} to another server (`tenant move`): under writes from two
//! replicas, no acknowledged write is lost and no answer holds another tenant's row;
//! both replicas serve the new place within a second of the move's end; a move killed
//! at each of its steps is resumed by running it again.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use futures_util::future::join;
use serde_json::json;

use crate::helpers::{TestApp, binary, operator, query_url, server_url};
use crate::servers::{OtherServer, spawn_behind_poolers, spawn_with_other_server};
use svc::domain::{Maintenance, Tenant, TenantStatus};
use svc::tenancy::isolation::{Move, Relocate, ServerAddress};
use svc::tenancy::lifecycle::{LifecycleError, Touch};

/// Where `identifier`'s notes are on the other server (`far`) or on the main one: the URL
/// of their database (as the owner) and their table.
fn notes_at(app: &TestApp, other: &OtherServer, identifier: &str, far: bool) -> (String, String) {
{%- if isolation == "schema" or isolation == "rls" %}
    let url = if far {
        format!("{}/{}", other.base_url, other.database)
    } else {
        app.db.url.clone()
    };
{%- endif %}
{%- if isolation == "schema" %}
    (url, format!("\"tenant_{identifier}\".notes"))
{%- elsif isolation == "rls" %}
    let _ = identifier;
    (url, "tenancy_data.notes".to_owned())
{%- else %}
    let database = format!("{}{identifier}", app.db.tenant_database_prefix);
    let url = if far {
        format!("{}/{database}", other.base_url)
    } else {
        crate::helpers::with_database(&server_url(), &database)
    };
    (url, "notes".to_owned())
{%- endif %}
}

/// The titles of `tenant`'s notes, read where they are on the other server (`far`) or on
/// the main one.
async fn titles_on(app: &TestApp, other: &OtherServer, tenant: &Tenant, far: bool) -> Vec<String> {
    let (url, table) = notes_at(app, other, tenant.identifier.as_str(), far);
{%- if isolation == "rls" %}
    let sql = format!(
        "SELECT title FROM {table} WHERE tenant_id = '{}'",
        tenant.id
    );
{%- else %}
    let sql = format!("SELECT title FROM {table}");
{%- endif %}
    query_url(&url, &sql)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect()
}

/// Whether a copy of `identifier`'s data (its {% if isolation == "schema" %}schema{% elsif isolation == "rls" %}rows: notes titled `<identifier>-...`, as every note of these tests is{% else %}database{% endif %}) is on the other server (`far`)
/// or on the main one.
async fn has_copy(app: &TestApp, other: &OtherServer, far: bool, identifier: &str) -> bool {
{%- if isolation == "schema" %}
    let (url, _) = notes_at(app, other, identifier, far);
    let sql = format!("SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_{identifier}'");
    !query_url(&url, &sql).await.unwrap().is_empty()
{%- elsif isolation == "rls" %}
    let (url, table) = notes_at(app, other, identifier, far);
    let sql = format!("SELECT 1 FROM {table} WHERE starts_with(title, '{identifier}-')");
    !query_url(&url, &sql).await.unwrap().is_empty()
{%- else %}
    let name = format!("{}{identifier}", app.db.tenant_database_prefix);
    if far {
        return other.has_database(&name).await;
    }
    let sql = format!("SELECT 1 FROM pg_database WHERE datname = '{name}'");
    !query_url(&server_url(), &sql).await.unwrap().is_empty()
{%- endif %}
}

/// Drops `identifier`'s copy on the main server by hand (as a move that died right after
/// dropping it leaves things).
async fn drop_old_copy(app: &TestApp, identifier: &str) {
{%- if isolation == "schema" %}
    app.db
        .query(&format!("DROP SCHEMA \"tenant_{identifier}\" CASCADE"))
        .await;
{%- elsif isolation == "rls" %}
    app.db
        .query(&format!(
            "DELETE FROM tenancy_data.notes WHERE starts_with(title, '{identifier}-')"
        ))
        .await;
{%- else %}
    let name = format!("{}{identifier}", app.db.tenant_database_prefix);
    query_url(
        &server_url(),
        &format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
    )
    .await
    .unwrap();
{%- endif %}
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
async fn a_tenant_moved_under_writes_from_two_replicas_keeps_every_acknowledged_write() {
    let Some((a, other)) = spawn_with_other_server().await else {
        return;
    };
    move_under_writes(&a, &other).await;
}

#[actix_web::test]
async fn a_tenant_moved_behind_a_pooler_on_each_server_keeps_every_acknowledged_write() {
    let Some((a, other, [near, far])) = spawn_behind_poolers("default").await else {
        return;
    };
    // A client waiting for a server connection that cannot be had (to the database the
    // move closed) gets an error after 3 s instead of 120.
    for pooler in [&near, &far] {
        pooler.reload_with("query_wait_timeout = 3");
    }
    move_under_writes(&a, &other).await;
    // The application role reached the new place through that server's pooler, and only
    // through it: once the pooler is gone, the tenant is not served, its neighbour is.
{%- if isolation == "schema" or isolation == "rls" %}
    let database = other.database.clone();
{%- else %}
    let database = format!("{}acme", a.db.tenant_database_prefix);
{%- endif %}
    let logged_in = far.databases_logged_in();
    assert!(logged_in.contains(&database), "{logged_in:?}");
    drop(far);
    let service = service!(a);
    for _ in 0..5 {
        let (status, body) = call!(service, get "/api/notes", tenant = "acme");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    let (status, body) = call!(service, get "/api/notes", tenant = "globex");
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Moves acme (200 notes) to the other server while two replicas of `a` write it and read
/// it and globex (20 notes, staying), and checks every row of every answer and every
/// acknowledged write.
async fn move_under_writes(a: &TestApp, other: &OtherServer) {
    let server = ServerAddress::parse(&other.address).unwrap();
    let b = svc::startup::prepare(&a.settings).await.unwrap();
    let service_a = service!(a);
    let service_b =
        actix_web::test::init_service(crate::helpers::app(b.clone(), &a.settings)).await;
    let acme = a.create_tenant("acme").await;
    let globex = a.create_tenant("globex").await;
    seed!(service_a, "acme", 200);
    seed!(service_a, "globex", 20);

    let done = Cell::new(false);
    let acknowledged = RefCell::new(Vec::<String>::new());
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
                    // Read-only while it moves, or a session ended by the switch.
                    StatusCode::SERVICE_UNAVAILABLE => refused.set(refused.get() + 1),
                    other => panic!("a write answered {other}: {body}"),
                }
                // Every row of every answer is the tenant's own.
                for (tenant, prefix) in [("acme", "acme-"), ("globex", "globex-")] {
                    let (status, body) =
                        call!(service, get "/api/notes?limit=100", tenant = tenant);
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        continue;
                    }
                    assert_eq!(status, StatusCode::OK, "{body}");
                    answers.set(answers.get() + 1);
                    for note in body.as_array().unwrap() {
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
            .move_tenant(
                &operator(),
                &acme.identifier,
                Some(server.clone()),
                |step| eprintln!("move: {step}"),
            )
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
    assert_eq!(moved.to.as_ref(), Some(&server));
    assert!(
        moved
            .tables
            .iter()
            .any(|t| t.table == "notes" && t.rows >= 200)
    );
    assert!(refused.get() > 0, "no write met the move");

    // Every acknowledged write is in the new database, with the seed, and nothing else.
    let far = titles_on(a, other, &acme, true).await;
    let far_set: HashSet<&String> = far.iter().collect();
    assert_eq!(far.len(), far_set.len(), "a row copied twice");
    let acknowledged = acknowledged.take();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|t| !far_set.contains(t))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(far.len(), 200 + acknowledged.len());
    assert!(far.iter().all(|t| t.starts_with("acme-")));
    assert!(
        !has_copy(a, other, false, "acme").await,
        "the old copy is left"
    );
    assert!(has_copy(a, other, true, "acme").await);
    // Globex did not move and lost nothing.
    assert_eq!(titles_on(a, other, &globex, false).await.len(), 20);

    // Both replicas write to the new place within a second of the move's end.
    for (replica, service) in [("a", &service_a), ("b", &service_b)] {
        let started = Instant::now();
        let title = format!("acme-after-{replica}");
        loop {
            let (status, body) =
                call!(service, post "/api/notes", tenant = "acme", json = json!({"title": title}));
            if status == StatusCode::CREATED {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "replica {replica}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(titles_on(a, other, &acme, true).await.contains(&title));
    }
    let now = a.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert_eq!(now.maintenance, Maintenance::Off);
    let history = a.tenancy.history(&acme.identifier, 5, None).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.operation == "move" && e.result == "ok"),
        "{history:?}"
    );
}

/// `tenant move <identifier> --to <to>`, run by the real binary.
fn move_command(app: &TestApp, other: &OtherServer, identifier: &str, to: &str) -> Command {
    let mut command = Command::new(binary());
    command
        .args(["tenant", "move", identifier, "--to", to])
        .env_clear()
        .envs(app.db.env())
        .env("TENANCY_DATABASE_SERVERS", &other.address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `tenant move <identifier> --to <the other server>` to its end; what it printed
/// on stdout and stderr.
fn move_to_the_other_server(
    app: &TestApp,
    other: &OtherServer,
    identifier: &str,
) -> (String, String) {
    let output = move_command(app, other, identifier, &other.address)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(output.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

/// Waits until a session is blocked by the lock `holder` holds (the move, on the lock of
/// the test's), at most 30 s. (Also the tier moves' tests.)
pub(crate) async fn wait_blocked_by(holder: i32) {
    let sql = format!("SELECT 1 FROM pg_stat_activity WHERE {holder} = ANY(pg_blocking_pids(pid))");
    let started = Instant::now();
    while query_url(&server_url(), &sql).await.unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the move never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The move's record: its step, if one is under way.
async fn move_step(app: &TestApp, tenant: &Tenant) -> Option<String> {
    let sql = format!(
        "SELECT step FROM tenancy.tenant_moves WHERE tenant_id = '{}'",
        tenant.id
    );
    app.db
        .query(&sql)
        .await
        .first()
        .and_then(|row| row[0].clone())
}

/// The server the registry names for `tenant` (`None`: the default one){% if tenant_databases %}: its database's
/// record, which the tenant's own row (what the API shows) always follows{% endif %}.
async fn recorded_server(app: &TestApp, tenant: &Tenant) -> Option<String> {
{%- if isolation == "schema" or isolation == "rls" %}
    let sql = format!(
        "SELECT server FROM tenancy.tenants WHERE id = '{}'",
        tenant.id
    );
    app.db.query(&sql).await.remove(0).remove(0)
{%- else %}
    let sql = format!(
        "SELECT d.server, t.server FROM tenancy.tenant_databases d \
         JOIN tenancy.tenants t ON t.id = d.tenant_id WHERE d.tenant_id = '{}'",
        tenant.id
    );
    let row = app.db.query(&sql).await.remove(0);
    assert_eq!(
        row[0], row[1],
        "the tenant's row and its database's record disagree"
    );
    row[0].clone()
{%- endif %}
}

/// Asks until `want` answers, at most a second (what replicas take to hear a change).
macro_rules! within_a_second {
    ($service:expr, $method:ident $path:expr, $want:expr $(, json = $body:expr)?) => ({
        let started = Instant::now();
        loop {
            let (status, body) = call!($service, $method $path, tenant = "acme" $(, json = $body)?);
            if status == $want {
                break body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{status} {body}, want {}",
                $want
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[actix_web::test]
async fn a_move_killed_before_its_switch_leaves_the_tenant_where_it_was_until_resumed() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let service = service!(app);
    let acme = app.create_tenant("acme").await;
    seed!(service, "acme", 30);

    // The move waits for this lock of acme's notes (as for a write under way): killed
    // there, its copy made and its record written, nothing switched.
    let lock = app.db.lock_notes(&acme).await;
    let holder: i32 = lock
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let mut killed = move_command(&app, &other, "acme", &other.address)
        .spawn()
        .unwrap();
    wait_blocked_by(holder).await;
    killed.kill().unwrap(); // SIGKILL: no clean-up of any kind
    killed.wait().unwrap();
    drop(lock);
    assert_eq!(move_step(&app, &acme).await.as_deref(), Some("copying"));
    assert_eq!(recorded_server(&app, &acme).await, None);
    // Served where it was, read-only until the move is resumed: reads answer, and every
    // write is refused (none can land in a copy about to be replaced).
    within_a_second!(service, post "/api/notes", StatusCode::SERVICE_UNAVAILABLE, json = json!({"title": "acme-refused"}));
    let (status, body) = call!(service, get "/api/notes?limit=100", tenant = "acme");
    assert_eq!(
        (status, body.as_array().unwrap().len()),
        (StatusCode::OK, 30)
    );
    // `migrate` leaves a moving tenant alone, and says so.
    let report = app
        .tenancy
        .migrate_all(&operator(), 1, Touch::Every, |_| {})
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(
        report.failures[0].1.contains("moving"),
        "{:?}",
        report.failures
    );

    // The same command resumes it.
    let (stdout, stderr) = move_to_the_other_server(&app, &other, "acme");
    assert!(
        stdout.contains("moved to") && stdout.contains("read-only for"),
        "{stdout}"
    );
    assert!(stderr.contains("copied notes: 30 rows"), "{stderr}");
    assert_eq!(move_step(&app, &acme).await, None);
    assert_eq!(
        recorded_server(&app, &acme).await,
        Some(other.address.clone())
    );
    let mut far = titles_on(&app, &other, &acme, true).await;
    far.sort();
    let mut seeded: Vec<String> = (0..30).map(|n| format!("acme-seed-{n}")).collect();
    seeded.sort();
    assert_eq!(far, seeded);
    assert!(!has_copy(&app, &other, false, "acme").await);
    within_a_second!(service, post "/api/notes", StatusCode::CREATED, json = json!({"title": "acme-after"}));
    assert!(
        titles_on(&app, &other, &acme, true)
            .await
            .contains(&"acme-after".to_string())
    );
}

/// Tenant acme with `notes` notes, and its move to the other server made up to its copy,
/// as a process that died there leaves it: read-only, an empty copy on the target.
async fn acme_moved_up_to_its_copy(
    app: &TestApp,
    other: &OtherServer,
    notes: usize,
) -> (Tenant, Move) {
    let service = service!(app);
    let acme = app.create_tenant("acme").await;
    seed!(service, "acme", notes);
    app.db
        .query(&format!(
            "UPDATE tenancy.tenants SET maintenance = 'moving' WHERE id = '{}'",
            acme.id
        ))
        .await;
    until(app, "acme", |t| t.maintenance == Maintenance::Moving).await;
    let server = ServerAddress::parse(&other.address).unwrap();
    let (strategy, ctx) = (app.tenancy.relocator(), app.tenancy.context());
    let moving = strategy
        .start_move(ctx, &acme, Some(&server))
        .await
        .unwrap();
    strategy.prepare_copy(ctx, &acme, &moving).await.unwrap();
    (acme, moving)
}

#[actix_web::test]
async fn a_move_killed_after_its_switch_is_served_from_the_new_place_and_finished_on_resume() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let service = service!(app);
    // The move's own steps up to its switch, then nothing: the process died there.
    let (acme, moving) = acme_moved_up_to_its_copy(&app, &other, 30).await;
    let (strategy, ctx) = (app.tenancy.relocator(), app.tenancy.context());
    let copied = strategy
        .copy_and_switch(ctx, &acme, &moving, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(copied[0].rows, 30);
    assert_eq!(move_step(&app, &acme).await.as_deref(), Some("switched"));
    assert_eq!(
        recorded_server(&app, &acme).await,
        Some(other.address.clone())
    );
    // The old copy is still there, and nothing of the service's can write it.
    assert!(has_copy(&app, &other, false, "acme").await);
{%- if isolation == "schema" or isolation == "rls" %}
    let old = app.db.app_url.clone();
    let refused = "tenant moved to another server";
{%- else %}
    let name = format!("{}acme", app.db.tenant_database_prefix);
    let old = crate::helpers::with_database(&app.db.app_url, &name);
    let refused = "permission denied";
{%- endif %}
    let (_, table) = notes_at(&app, &other, "acme", false);
{%- if isolation == "rls" %}
    // As acme's requests are scoped there.
    let scope = format!("SELECT set_config('app.tenant_id', '{}', false); ", acme.id);
    let write = format!("{scope}INSERT INTO {table} (title) VALUES ('acme-late')");
{%- else %}
    let write = format!("INSERT INTO {table} (title) VALUES ('acme-late')");
{%- endif %}
    let error = format!("{:?}", query_url(&old, &write).await.unwrap_err());
    assert!(error.contains(refused), "{error}");
{%- if isolation == "schema" %}
    // Even empty (TRUNCATE is not bound by row-level security), it refuses a read.
    app.db.query("TRUNCATE \"tenant_acme\".notes").await;
    let read = format!("SELECT count(*) FROM {table}");
    let error = format!("{:?}", query_url(&old, &read).await.unwrap_err());
    assert!(error.contains(refused), "{error}");
{%- elsif isolation == "rls" %}
    // Nor read them, by the primary key or by the whole table.
    for read in ["SELECT count(*) FROM", "SELECT title FROM"] {
        let sql = format!("{scope}{read} {table} WHERE tenant_id = '{}'", acme.id);
        let error = format!("{:?}", query_url(&old, &sql).await.unwrap_err());
        assert!(error.contains(refused), "{error}");
        let sql = format!("{scope}{read} {table}");
        let error = format!("{:?}", query_url(&old, &sql).await.unwrap_err());
        assert!(error.contains(refused), "{error}");
    }
    // Even with no row left in the table (TRUNCATE is not bound by row-level security), a
    // read that names the tenant, as the example's do, is refused: the policy's function
    // is then checked once, before the scan.
    app.db.query("TRUNCATE tenancy_data.notes").await;
    let sql = format!(
        "{scope}SELECT title FROM {table} WHERE tenant_id = '{}'",
        acme.id
    );
    let error = format!("{:?}", query_url(&old, &sql).await.unwrap_err());
    assert!(error.contains(refused), "{error}");
{%- endif %}
    let body = within_a_second!(service, get "/api/notes?limit=100", StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 30);

    let (_, stderr) = move_to_the_other_server(&app, &other, "acme");
    assert!(stderr.contains("resuming: served from"), "{stderr}");
    assert_eq!(move_step(&app, &acme).await, None);
    assert!(
        !has_copy(&app, &other, false, "acme").await,
        "the old copy is left"
    );
    let now = app.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert_eq!(now.maintenance, Maintenance::Off);
    within_a_second!(service, post "/api/notes", StatusCode::CREATED, json = json!({"title": "acme-after"}));
    assert_eq!(titles_on(&app, &other, &acme, true).await.len(), 31);
}

#[actix_web::test]
async fn a_move_given_up_after_sealing_its_old_copy_leaves_the_tenant_served_where_it_was() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let service = service!(app);
    let acme = app.create_tenant("acme").await;
    seed!(service, "acme", 10);
    let server = ServerAddress::parse(&other.address).unwrap();
    let (strategy, ctx) = (app.tenancy.relocator(), app.tenancy.context());
    let moving = strategy
        .start_move(ctx, &acme, Some(&server))
        .await
        .unwrap();
    strategy.prepare_copy(ctx, &acme, &moving).await.unwrap();
    strategy
        .copy_and_switch(ctx, &acme, &moving, Duration::from_secs(5))
        .await
        .unwrap();
    // As a switch whose transaction never committed leaves it: the old copy sealed, the
    // registry naming it still.
    app.db
        .query(&format!(
            "UPDATE tenancy.tenant_moves SET step = 'copying' WHERE tenant_id = '{id}'; \
{%- if isolation == "schema" or isolation == "rls" %}
             UPDATE tenancy.tenants SET server = NULL WHERE id = '{id}'",
{%- else %}
             UPDATE tenancy.tenant_databases SET server = NULL WHERE tenant_id = '{id}'",
{%- endif %}
            id = acme.id
        ))
        .await;
    until(&app, "acme", |t| t.server.is_none()).await;
    let (status, body) =
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "acme-sealed"}));
    assert_ne!(
        status,
        StatusCode::CREATED,
        "a sealed copy took a write: {body}"
    );

    strategy.abandon_move(ctx, &acme, &moving).await.unwrap();
    assert_eq!(move_step(&app, &acme).await, None);
    assert!(!has_copy(&app, &other, true, "acme").await);
    within_a_second!(service, post "/api/notes", StatusCode::CREATED, json = json!({"title": "acme-after"}));
    let mut titles = titles_on(&app, &other, &acme, false).await;
    titles.sort();
    let mut expected: Vec<String> = (0..10).map(|n| format!("acme-seed-{n}")).collect();
    expected.push("acme-after".into());
    expected.sort();
    assert_eq!(titles, expected);
{%- if isolation == "schema" %}
    // Nothing of the seal is left: no policy, row-level security off, no function.
    let left = app
        .db
        .query(
            "SELECT c.relname || ' ' || c.relrowsecurity || ' ' || \
               (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'tenant_acme' AND c.relkind = 'r' \
               AND c.relname <> '__diesel_schema_migrations' \
             UNION ALL SELECT p.proname::text FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'tenant_acme'",
        )
        .await;
    assert_eq!(left, vec![vec![Some("notes false 0".to_string())]]);
{%- elsif isolation == "rls" %}
    // The seal is lifted where it stays, and kept where it did not go.
    let sealed = format!(
        "SELECT 1 FROM tenancy.moved_away WHERE moved_tenant = '{}'",
        acme.id
    );
    assert!(app.db.query(&sealed).await.is_empty());
    let far = format!("{}/{}", other.base_url, other.database);
    assert_eq!(query_url(&far, &sealed).await.unwrap().len(), 1);
{%- endif %}
}

/// Asks the registry (through the service's cache) until `done` holds for `identifier`,
/// at most 2 s: the cache hears of a change made by another process within a second.
pub(crate) async fn until(app: &TestApp, identifier: &str, done: impl Fn(&Tenant) -> bool) {
    let identifier = svc::domain::TenantIdentifier::parse(identifier).unwrap();
    let started = Instant::now();
    loop {
        let tenant = app.tenancy.get_tenant(&identifier).await.unwrap();
        if done(&tenant) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{tenant:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `error` refuses to `then` (delete, destroy) a tenant until its move is finished.
fn refused_mid_move(error: &LifecycleError, then: &str) -> bool {
    let LifecycleError::Conflict(why) = error else {
        return false;
    };
    why.contains("finish the move") && why.contains(then)
}

#[actix_web::test]
async fn a_tenant_is_neither_deleted_nor_destroyed_while_a_move_holds_it_in_two_places() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    // A move that died once its copy was made: read-only, its data in two places.
    let (acme, _) = acme_moved_up_to_its_copy(&app, &other, 10).await;
    let refused = app
        .tenancy
        .delete_tenant(&operator(), &acme.identifier)
        .await
        .unwrap_err();
    assert!(refused_mid_move(&refused, "then delete it"), "{refused}");
    let now = app.tenancy.get_tenant(&acme.identifier).await.unwrap();
    assert_eq!(now.status, TenantStatus::Active);

    // Deleted all the same (a delete that raced the move's start): it is not destroyed
    // until the move is finished, which it still may be.
    app.db
        .query(&format!(
            "UPDATE tenancy.tenants SET status = 'deleted' WHERE id = '{}'",
            acme.id
        ))
        .await;
    until(&app, "acme", |t| t.status == TenantStatus::Deleted).await;
    let refused = app
        .tenancy
        .destroy_tenant(&operator(), &acme.identifier, "acme")
        .await
        .unwrap_err();
    assert!(refused_mid_move(&refused, "then destroy it"), "{refused}");
{%- if isolation == "rls" %}
    // Its rows go over at the switch, in one transaction: none there yet.
    assert!(!has_copy(&app, &other, true, "acme").await);
{%- else %}
    assert!(has_copy(&app, &other, true, "acme").await);
{%- endif %}
    move_to_the_other_server(&app, &other, "acme");
    until(&app, "acme", |t| t.maintenance == Maintenance::Off).await;
    app.tenancy
        .destroy_tenant(&operator(), &acme.identifier, "acme")
        .await
        .unwrap();
    // Nothing of it is left on either server.
    assert!(!has_copy(&app, &other, true, "acme").await);
    assert!(!has_copy(&app, &other, false, "acme").await);
}

#[actix_web::test]
async fn a_tenant_whose_move_stopped_while_it_took_writes_is_deleted_only_once_the_move_is_finished()
 {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let server = ServerAddress::parse(&other.address).unwrap();
    let service = service!(app);
    let (strategy, ctx) = (app.tenancy.relocator(), app.tenancy.context());
    // Two moves stopped where the tenant takes writes: after the empty copy was made, before
    // read-only; after the switch and the end of read-only, before the old copy was
    // dropped. Either way the tenant's database is in two places.
    for (tenant, switched) in [("copied", false), ("switched", true)] {
        let t = app.create_tenant(tenant).await;
        seed!(service, tenant, 10);
        let moving = strategy.start_move(ctx, &t, Some(&server)).await.unwrap();
        strategy.prepare_copy(ctx, &t, &moving).await.unwrap();
        if switched {
            strategy
                .copy_and_switch(ctx, &t, &moving, Duration::from_secs(5))
                .await
                .unwrap();
        }
        let now = app.tenancy.get_tenant(&t.identifier).await.unwrap();
        assert_eq!(now.maintenance, Maintenance::Off, "{tenant}");
        let refused = app
            .tenancy
            .delete_tenant(&operator(), &t.identifier)
            .await
            .unwrap_err();
        assert!(refused_mid_move(&refused, "then delete it"), "{refused}");
        let unfinished = format!("its move to {} is not finished", other.address);
        assert!(refused.to_string().contains(&unfinished), "{refused}");
        let now = app.tenancy.get_tenant(&t.identifier).await.unwrap();
        assert_eq!(now.status, TenantStatus::Active, "{tenant}");

        // Deleted all the same (a delete that raced the move): not destroyed, but the move
        // is still finished, and then it is.
        app.db
            .query(&format!(
                "UPDATE tenancy.tenants SET status = 'deleted' WHERE id = '{}'",
                t.id
            ))
            .await;
        until(&app, tenant, |t| t.status == TenantStatus::Deleted).await;
        let refused = app
            .tenancy
            .destroy_tenant(&operator(), &t.identifier, tenant)
            .await
            .unwrap_err();
        assert!(refused_mid_move(&refused, "then destroy it"), "{refused}");
        app.tenancy
            .move_tenant(&operator(), &t.identifier, Some(server.clone()), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e}"));
        assert_eq!(move_step(&app, &t).await, None, "{tenant}");
        app.tenancy
            .destroy_tenant(&operator(), &t.identifier, tenant)
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e}"));
        // Nothing of it is left on either server.
        assert!(!has_copy(&app, &other, true, tenant).await, "{tenant}");
        assert!(!has_copy(&app, &other, false, tenant).await, "{tenant}");
    }
    // A deleted tenant with no move to finish stays where it is.
    let t = app.create_tenant("still").await;
    app.tenancy
        .delete_tenant(&operator(), &t.identifier)
        .await
        .unwrap();
    let refused = app
        .tenancy
        .move_tenant(&operator(), &t.identifier, Some(server.clone()), |_| {})
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("is deleted"), "{refused}");
}

#[actix_web::test]
async fn a_move_stopped_after_any_of_its_steps_is_finished_by_running_it_again() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let server = ServerAddress::parse(&other.address).unwrap();
    let service = service!(app);
    let (strategy, ctx) = (app.tenancy.relocator(), app.tenancy.context());
    // How far each tenant's move got before its process died (the kill tests cover the
    // wait for the lock, and the switch).
    for (tenant, steps) in [("started", 1), ("prepared", 2), ("dropped", 4)] {
        let t = app.create_tenant(tenant).await;
        seed!(service, tenant, 10);
        let moving = strategy.start_move(ctx, &t, Some(&server)).await.unwrap();
        if steps >= 2 {
            strategy.prepare_copy(ctx, &t, &moving).await.unwrap();
        }
        if steps >= 4 {
            strategy
                .copy_and_switch(ctx, &t, &moving, Duration::from_secs(5))
                .await
                .unwrap();
            // `finish_move` dropped the old copy, and died before forgetting the move.
            drop_old_copy(&app, tenant).await;
        }
        let moved = app
            .tenancy
            .move_tenant(&operator(), &t.identifier, Some(server.clone()), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e}"));
        assert_eq!(moved.to.as_ref(), Some(&server), "{tenant}");
        assert_eq!(move_step(&app, &t).await, None, "{tenant}");
        assert_eq!(recorded_server(&app, &t).await, Some(other.address.clone()));
        let mut far = titles_on(&app, &other, &t, true).await;
        far.sort();
        let mut seeded: Vec<String> = (0..10).map(|n| format!("{tenant}-seed-{n}")).collect();
        seeded.sort();
        assert_eq!(far, seeded, "{tenant}");
        let now = app.tenancy.get_tenant(&t.identifier).await.unwrap();
        assert_eq!(now.maintenance, Maintenance::Off, "{tenant}");
    }
}

#[actix_web::test]
async fn a_move_is_refused_where_it_cannot_be_done_and_changes_nothing() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let server = ServerAddress::parse(&other.address).unwrap();
    let acme = app.create_tenant("acme").await;
    let move_to = |to: Option<&str>| {
        let to = to.map(|t| ServerAddress::parse(t).unwrap());
        let tenancy = app.tenancy.clone();
        let identifier = acme.identifier.clone();
        async move {
            tenancy
                .move_tenant(&operator(), &identifier, to, |_| {})
                .await
        }
    };
    match move_to(Some("db9.internal:5432")).await {
        Err(LifecycleError::Invalid(why)) => {
            assert!(why.contains("TENANCY_DATABASE_SERVERS"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    match move_to(None).await {
        Err(LifecycleError::Conflict(why)) => assert!(why.contains("already"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Another move under way, to another server: resumed only as it was asked.
    app.db
        .query(&format!(
            "INSERT INTO tenancy.tenant_moves (tenant_id, to_server)              VALUES ('{}', 'elsewhere.invalid:5432')",
            acme.id
        ))
        .await;
    match move_to(Some(server.as_str())).await {
        Err(LifecycleError::Conflict(why)) => {
            assert!(why.contains("--to elsewhere.invalid:5432"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    app.db.query("DELETE FROM tenancy.tenant_moves").await;
    app.tenancy
        .delete_tenant(&operator(), &acme.identifier)
        .await
        .unwrap();
    assert!(matches!(
        move_to(Some(server.as_str())).await,
        Err(LifecycleError::Conflict(_))
    ));
    // Nothing moved, nothing left behind, and every refusal is in the audit trail.
    assert_eq!(recorded_server(&app, &acme).await, None);
    assert!(!has_copy(&app, &other, true, "acme").await);
    let history = app
        .tenancy
        .history(&acme.identifier, 10, None)
        .await
        .unwrap();
    let refused = history
        .iter()
        .filter(|e| e.operation == "move" && e.result == "refused")
        .count();
    assert_eq!(refused, 4, "{history:?}");
    assert_eq!(
        app.tenancy
            .get_tenant(&acme.identifier)
            .await
            .unwrap()
            .maintenance,
        Maintenance::Off
    );
}
{%- if admin_api %}

#[actix_web::test]
async fn the_admin_api_moves_a_tenant_and_says_how_long_it_was_read_only() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let service = service!(app);
    let acme = app.create_tenant("acme").await;
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
    let unlisted =
        actix_web::test::call_service(&service, post(json!({"to": "db9.internal"}))).await;
    assert_eq!(unlisted.status(), StatusCode::BAD_REQUEST);
    let unknown =
        actix_web::test::call_service(&service, post(json!({"server": other.address}))).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);

    let moved = actix_web::test::call_service(&service, post(json!({"to": other.address}))).await;
    assert_eq!(moved.status(), StatusCode::OK);
    let body: serde_json::Value = actix_web::test::read_body_json(moved).await;
    assert_eq!(body["to"], json!(other.address));
    assert_eq!(body["from"], json!(null));
    assert_eq!(body["tables"], json!([{"table": "notes", "rows": 5}]));
    assert!(body["read_only_ms"].as_u64().is_some(), "{body}");
    assert_eq!(
        recorded_server(&app, &acme).await,
        Some(other.address.clone())
    );

    // And back to the default server.
    let back = actix_web::test::call_service(&service, post(json!({"to": null}))).await;
    assert_eq!(back.status(), StatusCode::OK);
    assert_eq!(recorded_server(&app, &acme).await, None);
    let again = actix_web::test::call_service(&service, post(json!({"to": null}))).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let (status, body) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(
        (status, body.as_array().map(Vec::len)),
        (StatusCode::OK, Some(5))
    );
}
{%- endif %}
