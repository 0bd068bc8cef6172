//! The generated binary's commands, run as a user would run them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{TestDatabase, binary, server_exec};

pub(crate) fn run(db: &TestDatabase, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_clear()
        .envs(db.env())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[actix_web::test]
async fn migrate_and_manage_tenants_from_the_command_line() {
    let db = TestDatabase::create().await;
    // A plan changes nothing; its exit code says whether anything is pending.
    let out = run(&db, &["migrate", "--plan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with("control plane: would apply 2026"),
        "{}",
        stdout(&out)
    );
    assert!(!db.schemas().await.contains(&"tenancy".to_owned()));
    let out = run(&db, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("tenants: 0 total"),
        "{}",
        stdout(&out)
    );
    let baseline = db.schemas().await;
    let out = run(&db, &["migrate", "--plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        stdout(&out),
        "control plane: up to date\ntenants: 0 total, 0 pending, 0 up to date\n"
    );

    let out = run(&db, &["tenant", "create", "acme", "--name", "Acme Corp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&db, &["tenant", "list"]);
    assert!(
        stdout(&out).contains("acme") && stdout(&out).contains("active"),
        "{}",
        stdout(&out)
    );

    // Nothing pending: no tenant is touched.
    let out = run(&db, &["migrate"]);
    assert!(
        stdout(&out).contains("tenants: 1 total, 0 pending, 0 changed, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("acme: up to date"));
    let out = run(&db, &["migrate", "--every-tenant"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("[1/1] acme: up to date"));

    let out = run(&db, &["tenant", "maintenance", "acme", "read_only"]);
    assert_eq!(stdout(&out), "tenant acme maintenance read_only\n");
    let out = run(&db, &["tenant", "maintenance", "acme", "readonly"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read_only or off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&db, &["tenant", "maintenance", "acme", "off"]);
    assert_eq!(stdout(&out), "tenant acme maintenance off\n");

    let out = run(&db, &["tenant", "limits", "acme"]);
    assert!(
        stdout(&out).contains("max_connections    default (")
            && stdout(&out).contains("statement_timeout  default (30 s"),
        "{}",
        stdout(&out)
    );
    let out = run(&db, &["tenant", "limits", "acme", "--max-connections", "3"]);
    assert!(
        stdout(&out).contains("max_connections    3\n")
            && stdout(&out).contains("statement_timeout  default ("),
        "{}",
        stdout(&out)
    );
    let out = run(
        &db,
        &["tenant", "limits", "acme", "--statement-timeout", "5"],
    );
    assert!(
        stdout(&out).contains("max_connections    3\n")
            && stdout(&out).contains("statement_timeout  5\n"),
        "{}",
        stdout(&out)
    );
    let out = run(
        &db,
        &[
            "tenant",
            "limits",
            "acme",
            "--rate-limit",
            "50",
            "--rate-limit-burst",
            "100",
        ],
    );
    assert!(
        stdout(&out).contains("  rate_limit         50\n")
            && stdout(&out).contains("  rate_limit_burst   100\n")
            && stdout(&out).contains("  statement_timeout  5\n"),
        "{}",
        stdout(&out)
    );
    let out = run(&db, &["tenant", "limits", "acme", "--max-connections", "0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-connections"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db.query("SELECT max_connections::text, statement_timeout::text FROM tenancy.tenants")
            .await,
        vec![vec![Some("3".to_string()), Some("5".to_string())]]
    );
    let out = run(
        &db,
        &["tenant", "limits", "acme", "--max-connections", "default"],
    );
    assert!(
        stdout(&out).contains("max_connections    default (")
            && stdout(&out).contains("statement_timeout  5\n"),
        "{}",
        stdout(&out)
    );

    let out = run(&db, &["tenant", "create", "Bad\"Name", "--name", "x"]);
    assert!(!out.status.success());
    assert_eq!(
        db.query("SELECT identifier FROM tenancy.tenants").await,
        vec![vec![Some("acme".to_string())]]
    );

    // A dry run lists what would go and changes nothing, deleted or not.
    let out = run(&db, &["tenant", "destroy", "acme", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = stdout(&out);
    assert!(
        plan.starts_with("tenant acme (active): destroy would drop ")
            && plan.contains("  notes ")
            && plan.contains("identifier acme would be quarantined for 30 days")
            && plan.contains("destroy refuses it now: it is active; `tenant delete acme` first")
            && plan.ends_with("nothing was changed (dry run)\n"),
        "{plan}"
    );
    let out = run(&db, &["tenant", "destroy", "acme"]);
    assert!(!out.status.success(), "--confirm or --dry-run is required");
    assert!(run(&db, &["tenant", "delete", "acme"]).status.success());
    let out = run(&db, &["tenant", "destroy", "acme", "--dry-run"]);
    assert!(
        stdout(&out).starts_with("tenant acme (deleted): destroy would drop ")
            && !stdout(&out).contains("refuses"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        db.query("SELECT status FROM tenancy.tenants").await,
        vec![vec![Some("deleted".to_string())]]
    );
    let refused = run(&db, &["tenant", "destroy", "acme", "--confirm", "other"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("confirmation"));
    assert!(
        run(&db, &["tenant", "destroy", "acme", "--confirm", "acme"])
            .status
            .success()
    );
    assert_eq!(db.schemas().await, baseline);
    assert!(
        db.query("SELECT identifier FROM tenancy.tenants")
            .await
            .is_empty()
    );

    // The identifier is quarantined until released.
    let out = run(&db, &["tenant", "create", "acme", "--name", "Acme again"]);
    assert!(!out.status.success());
    let refusal = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(refusal.contains("quarantined until"), "{refusal}");
    let out = run(&db, &["tenant", "release", "acme"]);
    assert_eq!(
        stdout(&out),
        "identifier acme released: a new tenant may take it\n"
    );
    let out = run(&db, &["tenant", "create", "acme", "--name", "Acme again"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every operation above is in the audit trail, as this OS user's CLI (or `migrate`).
    let out = run(&db, &["tenant", "history", "acme"]);
    let history = stdout(&out);
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("at (UTC)"), "{history}");
    assert!(
        lines[1..].iter().all(|l| {
            let actor = l.split_whitespace().nth(2).unwrap();
            let operation = l.split_whitespace().nth(3).unwrap();
            actor.starts_with(if operation == "migrate" {
                "migrate:"
            } else {
                "cli:"
            })
        }),
        "{history}"
    );
    let operations: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(
        operations,
        [
            "create",
            "release",
            "create",
            "destroy",
            "destroy",
            "delete",
            "limits",
            "limits",
            "limits",
            "limits",
            "maintenance",
            "maintenance",
            "migrate",
            "create",
        ],
        "{history}"
    );
    assert!(history.contains("quarantined until"), "{history}");
    let out = run(&db, &["tenant", "history", "nobody"]);
    assert_eq!(stdout(&out), "no recorded operation on nobody\n");
}

#[actix_web::test]
async fn migrate_can_create_the_application_role() {
    let db = TestDatabase::create().await;
    server_exec(&format!("DROP ROLE \"{}\"", db.app_role)).await;
    let out = run(&db, &["migrate", "--create-app-role"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains(&format!("created role {}", db.app_role)));
    let role = db
        .query(&format!(
            "SELECT rolcanlogin::text, rolsuper::text, rolbypassrls::text, rolcreaterole::text \
             FROM pg_roles WHERE rolname = '{}'",
            db.app_role
        ))
        .await;
    let expected = ["true", "false", "false", "false"].map(|v| Some(v.to_string()));
    assert_eq!(role, vec![expected.to_vec()]);
    // The new role logs in with the URL's password and runs the service's commands.
    assert!(
        run(&db, &["tenant", "create", "acme", "--name", "Acme"])
            .status
            .success()
    );
    assert!(stdout(&run(&db, &["tenant", "list"])).contains("acme"));
    let again = run(&db, &["migrate", "--create-app-role"]);
    assert!(stdout(&again).contains("exists"), "{}", stdout(&again));
}

#[test]
fn bad_configuration_names_the_variable_and_exits_2() {
    let out = Command::new(binary())
        .arg("tenant")
        .arg("list")
        .env_clear()
        .env(
            "TENANCY_DATABASE_URL",
            "postgres://app:s3cret@localhost/app",
        )
        .env("TENANCY_DATABASE_POOL_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TENANCY_DATABASE_POOL_SIZE"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn an_unreachable_database_is_named_at_once_and_nothing_half_printed() {
    let started = Instant::now();
    let out = Command::new(binary())
        .args(["tenant", "list"])
        .env_clear()
        .envs(crate::helpers::base_env())
        // Nothing listens on port 1.
        .env(
            "TENANCY_DATABASE_URL",
            "postgres://app:s3cret@127.0.0.1:1/app",
        )
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert_eq!(stdout(&out), "", "a failure prints no half table");
}

/// Kills the server if the test fails before it stopped.
pub(crate) struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_web::test]
async fn serve_answers_and_stops_gracefully_on_sigterm() {
    let db = TestDatabase::create().await;
    assert!(
        run(&db, &["tenant", "create", "acme", "--name", "Acme"])
            .status
            .success()
    );
    let mut server = Server(
        Command::new(binary())
            .arg("serve")
            .env_clear()
            .envs(db.env())
            .env("TENANCY_HOST", "127.0.0.1")
            .env("TENANCY_PORT", "0")
            .env("TENANCY_WORKERS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Read the server's log lines on a thread, so that no wait can hang the test.
    let stdout = server.0.stdout.take().unwrap();
    let (lines, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || {
        logs.recv_timeout(Duration::from_secs(20))
            .expect("no log line from the server within 20 s")
    };
    let port = loop {
        let line = next_line();
        assert!(
            !line.contains(&db.app_password),
            "a password was logged: {line}"
        );
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["message"] == "listening" {
            break event["port"].as_u64().unwrap();
        }
    };

    let send = |request: String| {
        let mut stream = TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let ready =
        send("GET /health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into());
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let notes = send(crate::helpers::raw_request("/api/notes", "acme"));
    assert!(notes.starts_with("HTTP/1.1 200"), "{notes}");

    // The request's log line carries the tenant on its span.
    let finished = loop {
        // The server is still running: a missing line would block, so the request above
        // must have been logged before SIGTERM.
        let line = next_line();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["message"] == "request finished" && event["span"]["http.route"] == "/api/notes" {
            break event;
        }
    };
    assert_eq!(finished["span"]["tenant.identifier"], "acme", "{finished}");
    // ... and the id the response gave the client.
    let request_id = notes
        .lines()
        .find_map(|line| line.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no X-Request-Id in {notes}"));
    assert_eq!(finished["span"]["request_id"], request_id, "{finished}");
    assert_eq!(
        finished["span"]["tenant.id"].as_str().map(str::len),
        Some(36),
        "{finished}"
    );

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(server.0.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let rest: Vec<String> = logs.iter().collect();
    assert!(rest.iter().all(|line| !line.contains(&db.app_password)));
    // Every line, to the last, is a JSON object.
    let rest: Vec<serde_json::Value> = rest
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        rest.iter().any(|event| event["message"] == "stopped"),
        "{rest:?}"
    );
}

/// `serve` against a server that does not answer (a wrong port, as a new user may give)
/// says so, and does not send them to run `migrate`.
#[actix_web::test]
async fn serve_against_a_server_that_does_not_answer_names_that_not_migrate() {
    let db = TestDatabase::create().await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{port}/{}",
        db.app_role, db.app_password, db.name
    );
    let env = db
        .env()
        .into_iter()
        .filter(|(key, _)| *key != "TENANCY_MIGRATION_DATABASE_URL")
        .map(|(k, v)| match k {
            "TENANCY_DATABASE_URL" => (k.to_string(), url.clone()),
            _ => (k.to_string(), v),
        })
        .collect();
    let settings = svc::config::Settings::from_env_map(env).unwrap().0;
    let refused = svc::startup::prepare(&settings)
        .await
        .err()
        .unwrap()
        .to_string();
    let cause = format!("TENANCY_DATABASE_URL: could not reach PostgreSQL at 127.0.0.1:{port}: ");
    assert!(refused.starts_with(&cause), "{refused}");
    assert!(!refused.contains("migrate"), "{refused}");
    assert!(!refused.contains(&db.app_password), "{refused}");
}

/// `serve` as a Kubernetes Deployment runs it: the application role's URL only (the
/// owner's stays with the migrate Job).
#[actix_web::test]
async fn without_the_owners_url_serve_uses_what_migrate_applied_and_refuses_before_it() {
    let settings_of = |db: &TestDatabase| {
        let env = db
            .env()
            .into_iter()
            .filter(|(key, _)| *key != "TENANCY_MIGRATION_DATABASE_URL")
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        svc::config::Settings::from_env_map(env).unwrap().0
    };

    // Nothing migrated yet: refused, saying what to run.
    let fresh = TestDatabase::create().await;
    let refused = svc::startup::prepare(&settings_of(&fresh))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("run `migrate` first"), "{refused}");

    // Migrated by the owner (as the Job does): served by the application role alone.
    let app = crate::helpers::spawn_app().await;
    app.create_tenant("acme").await;
    let tenancy = svc::startup::prepare(&settings_of(&app.db)).await.unwrap();
    let service = actix_web::test::init_service(svc::startup::app(tenancy, &app.settings)).await;
    let (status, body) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, actix_web::http::StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn a_tenants_jobs_are_listed_cancelled_and_retried_from_the_command_line() {
    let app = crate::helpers::spawn_app().await;
    let acme = app.create_tenant("acme").await;
    // No worker runs: the job stays where the commands put it.
    let job = app.enqueue_import(&acme, "later").await;
    let id = job.id.to_string();
    let listed = stdout(&run(&app.db, &["jobs", "list", "acme"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..4],
        [id.as_str(), "import_notes", "queued", "0/5"],
        "{listed}"
    );

    let out = run(&app.db, &["jobs", "cancel", "acme", &id]);
    assert_eq!(stdout(&out), format!("job {id} is cancelled\n"));
    let out = run(&app.db, &["jobs", "cancel", "acme", &id]);
    assert_eq!(out.status.code(), Some(1));
    let refusal = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        refusal.contains("only a queued or dead job is cancelled"),
        "{refusal}"
    );
    let out = run(&app.db, &["jobs", "retry", "acme", &id]);
    assert_eq!(stdout(&out), format!("job {id} is queued, due now\n"));
    let out = run(&app.db, &["jobs", "list", "acme", "--state", "dead"]);
    assert_eq!(stdout(&out), "no jobs\n");
    let out = run(&app.db, &["jobs", "list", "acme", "--state", "lost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state: 'lost' is not a job state"));
    let out = run(&app.db, &["jobs", "retry", "acme", "999999999"]);
    assert_eq!(out.status.code(), Some(1));
    let refusal = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        refusal.contains("tenant 'acme' has no job 999999999"),
        "{refusal}"
    );

    let history = stdout(&run(&app.db, &["tenant", "history", "acme"]));
    let operations: Vec<(&str, &str)> = history
        .lines()
        .skip(1)
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[3], fields[4])
        })
        .collect();
    assert_eq!(
        operations[..4],
        [
            ("job_retry", "refused"),
            ("job_retry", "ok"),
            ("job_cancel", "refused"),
            ("job_cancel", "ok")
        ],
        "{history}"
    );
}
