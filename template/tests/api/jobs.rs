//! Background jobs: enqueued for a tenant, run by workers on that tenant's connection
//! alone, retried, dead-lettered, held while the tenant is not served, served fairly,
//! and removed with the tenant. Checked over HTTP and in the database.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use actix_web::test;

use crate::helpers::{
    TestApp, TestDatabase, binary, for_tenant, operator, scrape, server_url, spawn_app_with, value,
};
use crate::pgbouncer::PgBouncer;
use crate::pooler::{SERVER_CONNECTIONS, spawn_behind};
use svc::domain::{Tenant, TenantIdentifier};
use svc::jobs::worker::Workers;
use svc::jobs::{Enqueue, JobState, Queue};
use svc::routes::Object;
use svc::routes::notes::{ImportNotes, NoteInput};
use svc::tenancy::lifecycle::LifecycleError;

/// Settings that keep the tests short: retries after 10 ms, idle workers look every
/// second.
const FAST: &[(&str, &str)] = &[
    ("TENANCY_JOBS_RETRY_BACKOFF", "10"),
    ("TENANCY_JOBS_POLL_INTERVAL", "1"),
];

fn id(s: &str) -> TenantIdentifier {
    TenantIdentifier::parse(s).unwrap()
}

fn start_workers(app: &TestApp, count: usize) -> Workers {
    let mut settings = app.settings.jobs.clone();
    settings.workers = count;
    Workers::start(
        Queue::new(app.tenancy.clone()),
        svc::startup::job_kinds(),
        settings,
        Duration::from_secs(5),
    )
}

fn import(titles: &[String]) -> ImportNotes {
    ImportNotes {
        notes: titles
            .iter()
            .map(|title| {
                Object(NoteInput {
                    title: title.clone(),
                    body: String::new(),
                })
            })
            .collect(),
    }
}

/// The state of job `id`, read as the owner.
async fn state_of(app: &TestApp, id: i64) -> String {
    app.db
        .query(&format!("SELECT state FROM tenancy.jobs WHERE id = {id}"))
        .await[0][0]
        .clone()
        .unwrap()
}

/// Waits until `sql` (one number) reads `expected`, at most `within`.
async fn wait_for(app: &TestApp, sql: &str, expected: i64, within: Duration) {
    let started = Instant::now();
    loop {
        let value: i64 = app.db.query(sql).await[0][0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        if value == expected {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{sql} gave {value}, not {expected}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until job `id` is in `state`, at most `within`.
async fn wait_for_state(app: &TestApp, id: i64, state: &str, within: Duration) {
    let sql = format!("SELECT count(*) FROM tenancy.jobs WHERE id = {id} AND state = '{state}'");
    wait_for(app, &sql, 1, within).await;
}

#[actix_web::test]
async fn an_import_runs_in_the_background_and_only_its_tenant_sees_it() {
    let app = spawn_app_with(FAST).await;
    let (acme, globex) = (
        app.create_tenant("acme").await,
        app.create_tenant("globex").await,
    );
    let workers = start_workers(&app, 2);
    let service = service!(app);
    let body = serde_json::json!({"notes": [{"title": "one"}, {"title": "two", "body": "2"}]});
    let (status, job) = call!(service, post "/api/notes/import", tenant = "acme", json = &body);
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["id"].as_i64().unwrap();
    assert_eq!(job["state"], "queued");
    assert_eq!(job["kind"], "import_notes");

    let path = format!("/api/jobs/{job_id}");
    let started = Instant::now();
    let done = loop {
        let (status, job) = call!(service, get & path, tenant = "acme");
        assert_eq!(status, StatusCode::OK, "{job}");
        if job["state"] == "done" {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        done["result"],
        serde_json::json!({"imported": 2, "notes": 2})
    );
    assert_eq!(done["attempts"], 1);
    // The other tenant neither sees the job nor got its notes.
    let (status, _) = call!(service, get & path, tenant = "globex");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.db.notes_of(&acme).await, Some(2));
    assert_eq!(app.db.notes_of(&globex).await, Some(0));
    let (_, notes) = call!(service, get "/api/notes", tenant = "acme");
    let mut titles: Vec<&str> = notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    titles.sort_unstable();
    assert_eq!(titles, ["one", "two"]);

    // Bad input is refused before anything is enqueued.
    for bad in [
        serde_json::json!({"notes": []}),
        serde_json::json!({"notes": [{"title": ""}]}),
        serde_json::json!({"notes": [{"title": "x"}], "tenant": "globex"}),
    ] {
        let (status, problem) =
            call!(service, post "/api/notes/import", tenant = "acme", json = &bad);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
    let long = "k".repeat(201);
    for key in [&b"a\tb"[..], b"\tab", b"ab ", long.as_bytes(), b"caf\xe9"] {
        let value = HeaderValue::from_bytes(key).unwrap();
        let request = for_tenant(test::TestRequest::post(), "/api/notes/import", "acme")
            .insert_header(("idempotency-key", value))
            .set_json(&body);
        let response = test::call_service(&service, request.to_request()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{key:?}");
    }
    let jobs = app.db.query("SELECT count(*) FROM tenancy.jobs").await;
    assert_eq!(jobs[0][0].as_deref(), Some("1"));
    workers.stop().await;
}

#[actix_web::test]
async fn twenty_tenants_times_a_hundred_jobs_each_see_and_write_only_their_own_tenant() {
    let app = spawn_app_with(FAST).await;
    jobs_stay_with_their_tenants(&app, 20, 100, 4).await;
}

#[actix_web::test]
async fn behind_a_transaction_pooler_jobs_stay_with_their_tenants_too() {
    let Some(pooler) = PgBouncer::start(&server_url(), "transaction", SERVER_CONNECTIONS) else {
        return;
    };
    let app = spawn_behind(&pooler, TestDatabase::create().await, FAST).await;
    jobs_stay_with_their_tenants(&app, 10, 20, 4).await;
}

/// `tenants` tenants with `each` jobs each, enqueued before `workers` workers drain them
/// at once: every job ran once, and every row each tenant has is one of its own jobs'.
async fn jobs_stay_with_their_tenants(app: &TestApp, tenants: usize, each: usize, workers: usize) {
    let queue = Queue::new(app.tenancy.clone());
    let names: Vec<String> = (0..tenants).map(|n| format!("t{n:02}")).collect();
    let created = app.create_tenants(&names).await;
    for round in 0..each {
        for tenant in &created {
            let title = format!("{}-{round}", tenant.identifier);
            queue
                .enqueue(tenant, &import(&[title]), Enqueue::default())
                .await
                .unwrap();
        }
    }
    let running = start_workers(app, workers);
    wait_for(
        app,
        "SELECT count(*) FROM tenancy.jobs WHERE state = 'done'",
        (tenants * each) as i64,
        Duration::from_secs(120),
    )
    .await;
    running.stop().await;

    let service = service!(app);
    for tenant in &created {
        let identifier = tenant.identifier.as_str();
        let path = format!("/api/notes?limit={each}");
        let (status, notes) = call!(service, get & path, tenant = identifier);
        assert_eq!(status, StatusCode::OK);
        let notes = notes.as_array().unwrap();
        assert_eq!(notes.len(), each, "{identifier}");
        for note in notes {
            let title = note["title"].as_str().unwrap();
            assert!(
                title.starts_with(&format!("{identifier}-")),
                "{identifier} has {title}"
            );
        }
        assert_eq!(app.db.notes_of(tenant).await, Some(each as i64));
        // Each job counted its own tenant's notes only.
        let jobs = queue
            .jobs_of(&tenant.identifier, None, 1000, None)
            .await
            .unwrap();
        assert_eq!(jobs.len(), each);
        for job in jobs {
            assert_eq!((job.state, job.attempts), (JobState::Done, 1));
            let seen = job.result.unwrap()["notes"].as_i64().unwrap();
            assert!(
                (1..=each as i64).contains(&seen),
                "{identifier}'s job saw {seen} notes"
            );
        }
    }
}

#[actix_web::test]
async fn a_failing_job_is_retried_then_dead_with_its_error_until_an_operator_retries_it() {
    let app = spawn_app_with(FAST).await;
    let acme = app.create_tenant("acme").await;
    let queue = Queue::new(app.tenancy.clone());
    // Refused by the database at every attempt (the HTTP route would refuse it earlier).
    let (job, _) = queue
        .enqueue(&acme, &import(&[String::new()]), Enqueue::default())
        .await
        .unwrap();
    let workers = start_workers(&app, 2);
    wait_for_state(&app, job.id, "dead", Duration::from_secs(20)).await;
    let dead = &queue
        .jobs_of(&acme.identifier, Some(JobState::Dead), 10, None)
        .await
        .unwrap()[0];
    assert_eq!(dead.attempts, 5);
    assert_eq!(dead.max_attempts, 5);
    let error = dead.last_error.as_deref().unwrap();
    assert!(
        error.contains("title must have 1 to 200 characters"),
        "{error}"
    );
    assert!(dead.finished_at.is_some());
    assert_eq!(app.db.notes_of(&acme).await, Some(0));
    // /metrics counts it dead, and every attempt.
    let service = service!(app);
    let request = actix_web::test::TestRequest::get().uri("/metrics");
    let scraped = scrape(&service, request.to_request()).await;
    let default = ("queue", "default");
    assert_eq!(
        value(&scraped, "tenancy_jobs", &[default, ("state", "dead")]),
        1.0
    );
    assert_eq!(
        value(&scraped, "tenancy_jobs", &[default, ("state", "queued")]),
        0.0
    );
    let attempts = |result| {
        value(
            &scraped,
            "tenancy_job_attempts_total",
            &[default, ("result", result)],
        )
    };
    assert_eq!((attempts("queued"), attempts("dead")), (4.0, 1.0));
    // Its tenant sees it dead, without the database's words.
    let path = format!("/api/jobs/{}", job.id);
    let (status, seen) = call!(service, get & path, tenant = "acme");
    assert_eq!(
        (status, &seen["state"]),
        (StatusCode::OK, &serde_json::json!("dead"))
    );
    assert!(!seen.to_string().contains("title"), "{seen}");

    // Retried by an operator: every attempt again, then dead again; then cancelled.
    let retried = queue
        .retry(&operator(), &acme.identifier, job.id)
        .await
        .unwrap();
    assert_eq!((retried.state, retried.attempts), (JobState::Queued, 0));
    wait_for_state(&app, job.id, "dead", Duration::from_secs(20)).await;
    workers.stop().await;
    let cancelled = queue
        .cancel(&operator(), &acme.identifier, job.id)
        .await
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(matches!(
        queue.cancel(&operator(), &acme.identifier, job.id).await,
        Err(LifecycleError::Conflict(_))
    ));
    assert!(matches!(
        queue
            .retry(&operator(), &acme.identifier, job.id + 1000)
            .await,
        Err(LifecycleError::NoJob(..))
    ));
    // Another tenant cannot reach it.
    app.create_tenant("globex").await;
    assert!(matches!(
        queue.cancel(&operator(), &id("globex"), job.id).await,
        Err(LifecycleError::NoJob(..))
    ));
    let trail = app
        .db
        .query(
            "SELECT operation || ':' || result FROM tenancy.audit \
             WHERE operation LIKE 'job_%' ORDER BY id",
        )
        .await;
    let trail: Vec<&str> = trail.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(
        trail,
        [
            "job_retry:ok",
            "job_cancel:ok",
            "job_cancel:refused",
            "job_retry:refused",
            "job_cancel:refused"
        ]
    );
}

#[actix_web::test]
async fn a_suspended_tenants_jobs_wait_and_run_after_activation_and_go_with_the_tenant() {
    let app = spawn_app_with(FAST).await;
    let by = operator();
    let acme = app.create_tenant("acme").await;
    let queue = Queue::new(app.tenancy.clone());
    app.tenancy
        .suspend_tenant(&by, &acme.identifier)
        .await
        .unwrap();
    let workers = start_workers(&app, 2);
    let (held, _) = queue
        .enqueue(&acme, &import(&["held".into()]), Enqueue::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(state_of(&app, held.id).await, "queued");
    app.tenancy
        .activate_tenant(&by, &acme.identifier)
        .await
        .unwrap();
    wait_for_state(&app, held.id, "done", Duration::from_secs(10)).await;

    // Deleted: held too; destroyed: gone.
    app.tenancy
        .delete_tenant(&by, &acme.identifier)
        .await
        .unwrap();
    let (later, _) = queue
        .enqueue(&acme, &import(&["later".into()]), Enqueue::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(state_of(&app, later.id).await, "queued");
    workers.stop().await;
    app.tenancy
        .destroy_tenant(&by, &acme.identifier, "acme")
        .await
        .unwrap();
    let left = app
        .db
        .query(
            "SELECT (SELECT count(*) FROM tenancy.jobs) + (SELECT count(*) FROM tenancy.job_turns)",
        )
        .await;
    assert_eq!(left[0][0].as_deref(), Some("0"));
}

#[actix_web::test]
async fn one_key_makes_one_job_and_a_scheduled_job_waits_for_its_time() {
    let app = spawn_app_with(FAST).await;
    let acme = app.create_tenant("acme").await;
    let queue = Queue::new(app.tenancy.clone());
    let keyed = || Enqueue {
        idempotency_key: Some("import-42".into()),
        ..Enqueue::default()
    };
    let (first, new) = queue
        .enqueue(&acme, &import(&["once".into()]), keyed())
        .await
        .unwrap();
    assert!(new);
    let (again, new) = queue
        .enqueue(&acme, &import(&["twice".into()]), keyed())
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(again.id, first.id);
    // The same key of another tenant is another job.
    let globex = app.create_tenant("globex").await;
    let (theirs, new) = queue
        .enqueue(&globex, &import(&["theirs".into()]), keyed())
        .await
        .unwrap();
    assert!(new);
    assert_ne!(theirs.id, first.id);

    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (scheduled, _) = queue
        .enqueue(
            &acme,
            &import(&["later".into()]),
            Enqueue {
                run_at: Some(at),
                ..Enqueue::default()
            },
        )
        .await
        .unwrap();
    let workers = start_workers(&app, 2);
    wait_for_state(&app, first.id, "done", Duration::from_secs(10)).await;
    assert_eq!(state_of(&app, scheduled.id).await, "queued");
    wait_for_state(&app, scheduled.id, "done", Duration::from_secs(15)).await;
    workers.stop().await;
    // Its attempt started (`run_at`, once claimed) no earlier than it was scheduled for.
    let ran = queue.get(&acme, scheduled.id).await.unwrap().unwrap();
    assert!(ran.run_at >= scheduled.run_at, "{ran:?} before {at}");
    // One job ran for the key: one note.
    assert_eq!(app.db.notes_of(&acme).await, Some(2));
}

#[actix_web::test]
async fn one_tenants_100000_jobs_delay_anothers_next_job_by_at_most_a_job_per_worker() {
    const WORKERS: usize = 2;
    let app = spawn_app_with(FAST).await;
    let (flood, quiet) = (
        app.create_tenant("flood").await,
        app.create_tenant("quiet").await,
    );
    let queue = Queue::new(app.tenancy.clone());
    // 100,000 jobs of one tenant, written straight into the queue (as 100,000 enqueues
    // would, a statement each).
    app.db
        .query(&format!(
            "INSERT INTO tenancy.jobs (tenant_id, queue, kind, payload, max_attempts) \
             SELECT '{}', 'default', 'import_notes', jsonb_build_object('notes', \
               jsonb_build_array(jsonb_build_object('title', 'f' || n))), 5 \
             FROM generate_series(1, 100000) AS n; \
             INSERT INTO tenancy.job_turns (tenant_id) VALUES ('{}'); \
             ANALYZE tenancy.jobs",
            flood.id, flood.id
        ))
        .await;
    let workers = start_workers(&app, WORKERS);
    // Wait until the backlog is being worked through.
    wait_for(
        &app,
        "SELECT least(count(*), 20) FROM tenancy.jobs WHERE state = 'done'",
        20,
        Duration::from_secs(30),
    )
    .await;
    let (job, _) = queue
        .enqueue(&quiet, &import(&["q".into()]), Enqueue::default())
        .await
        .unwrap();
    wait_for_state(&app, job.id, "done", Duration::from_secs(10)).await;
    workers.stop().await;
    // The flooding tenant's jobs that ended between the quiet one's enqueueing and its
    // start (`run_at`, once claimed).
    let overtaken: i64 = app
        .db
        .query(&format!(
            "SELECT count(*) FROM tenancy.jobs f, tenancy.jobs q \
             WHERE q.id = {} AND f.tenant_id = '{}' \
               AND f.finished_at > q.created_at AND f.finished_at < q.run_at",
            job.id, flood.id
        ))
        .await[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let left: i64 = app
        .db
        .query("SELECT count(*) FROM tenancy.jobs WHERE state = 'queued'")
        .await[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        left > 100,
        "the backlog ran out first ({left} left): the test proves nothing"
    );
    // At most the jobs in hand when it was enqueued: one per worker (a claim under way
    // included).
    assert!(
        overtaken <= WORKERS as i64,
        "{overtaken} of the backlog's jobs ended while the quiet tenant's job waited"
    );
}

/// A `worker` process (with `env` too) holding `acme`'s one job, whose insert waits on
/// a lock of the tenant's notes until the returned connection is dropped.
async fn worker_stuck_in_a_job(
    app: &TestApp,
    acme: &Tenant,
    env: &[(&str, &str)],
) -> (Child, tokio_postgres::Client) {
    let lock = app.db.lock_notes(acme).await;
    let worker = Command::new(binary())
        .arg("worker")
        .env_clear()
        .envs(app.db.env())
        .envs(FAST.iter().chain(env).copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Blocked by this lock, not by another test's: until then the worker may
    // not have installed its signal handlers yet.
    let holder: i32 = lock
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE {holder} = ANY(pg_blocking_pids(pid))"
    );
    wait_for(app, &waiting, 1, Duration::from_secs(30)).await;
    (worker, lock)
}

#[actix_web::test]
async fn an_attempt_longer_than_the_timeout_is_stopped_rolled_back_and_retried() {
    let app = spawn_app_with(&[FAST, &[("TENANCY_JOBS_TIMEOUT", "1")]].concat()).await;
    let acme = app.create_tenant("acme").await;
    let queue = Queue::new(app.tenancy.clone());
    // Its insert waits on a lock of acme's notes for as long as the lock is held.
    let lock = app.db.lock_notes(&acme).await;
    let (job, _) = queue
        .enqueue(&acme, &import(&["once".into()]), Enqueue::default())
        .await
        .unwrap();
    let started = Instant::now();
    let workers = start_workers(&app, 1);
    let stopped = format!(
        "SELECT count(*) FROM tenancy.jobs WHERE id = {} AND attempts >= 1 \
           AND last_error LIKE '%did not end within TENANCY_JOBS_TIMEOUT (1 s)%'",
        job.id
    );
    wait_for(&app, &stopped, 1, Duration::from_secs(20)).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    let waiting = queue.get(&acme, job.id).await.unwrap().unwrap();
    assert_ne!(waiting.state, JobState::Done);
    drop(lock);

    // Once the lock is gone an attempt ends in time: one note, the stopped attempts'
    // inserts rolled back with their connections.
    wait_for_state(&app, job.id, "done", Duration::from_secs(20)).await;
    workers.stop().await;
    let done = queue.get(&acme, job.id).await.unwrap().unwrap();
    assert!(done.attempts >= 2, "{done:?}");
    assert_eq!(app.db.notes_of(&acme).await, Some(1));
}

#[actix_web::test]
async fn a_worker_killed_mid_job_leaves_the_job_to_run_again() {
    let lease = ("TENANCY_JOBS_LEASE", "3");
    let app = spawn_app_with(&[FAST[0], FAST[1], lease]).await;
    let acme = app.create_tenant("acme").await;
    let queue = Queue::new(app.tenancy.clone());
    let (job, _) = queue
        .enqueue(&acme, &import(&["once".into()]), Enqueue::default())
        .await
        .unwrap();
    // Killed in the middle of the job's insert.
    let (mut worker, lock) = worker_stuck_in_a_job(&app, &acme, &[lease]).await;
    assert_eq!(state_of(&app, job.id).await, "running");
    worker.kill().unwrap(); // SIGKILL: no shutdown, no give-back
    worker.wait().unwrap();
    drop(lock);

    // Another worker runs it once the killed one's lease has expired.
    let workers = start_workers(&app, 1);
    wait_for_state(&app, job.id, "done", Duration::from_secs(20)).await;
    workers.stop().await;
    let done = queue.get(&acme, job.id).await.unwrap().unwrap();
    assert_eq!(done.attempts, 2);
    let error = done.last_error.unwrap_or_default();
    assert!(error.contains("worker stopped"), "{error}");
    // The killed attempt's insert was rolled back with its connection: one note.
    assert_eq!(app.db.notes_of(&acme).await, Some(1));
}

#[actix_web::test]
async fn a_worker_told_to_stop_gives_back_the_job_it_cannot_finish_in_time() {
    let app = spawn_app_with(FAST).await;
    let acme = app.create_tenant("acme").await;
    let queue = Queue::new(app.tenancy.clone());
    let (job, _) = queue
        .enqueue(&acme, &import(&["once".into()]), Enqueue::default())
        .await
        .unwrap();
    let shutdown = ("TENANCY_SHUTDOWN_TIMEOUT", "1");
    let (mut worker, lock) = worker_stuck_in_a_job(&app, &acme, &[shutdown]).await;
    let stopped = Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = worker.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(stopped.elapsed() < Duration::from_secs(10));
    // Given back as if never started: queued, no attempt spent.
    let back = queue.get(&acme, job.id).await.unwrap().unwrap();
    assert_eq!((back.state, back.attempts), (JobState::Queued, 0));
    drop(lock);
    let workers = start_workers(&app, 1);
    wait_for_state(&app, job.id, "done", Duration::from_secs(20)).await;
    workers.stop().await;
    assert_eq!(app.db.notes_of(&acme).await, Some(1));
}
