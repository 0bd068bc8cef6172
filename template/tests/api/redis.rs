//! The tenant cache's shared level (Redis): what one replica read from the registry the
//! others get from Redis; with Redis frozen the service answers from the registry, says it
//! is degraded, and keeps nothing stale once Redis is back. Rate limits hold across
//! replicas through Redis, and fail open or closed, as set, while it cannot say. The
//! frozen Redis is a server of this test's own (`redis-server` on a free port), not the
//! shared one.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::test;

use crate::helpers::*;
use crate::tls::TestCa;
use svc::domain::TenantIdentifier;

const LONG_TTL: (&str, &str) = ("TENANCY_TENANT_CACHE_TTL", "3600");

/// A `redis-server` of the test's own, stopped when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    /// With TLS: the folder of its certificates (`ca.crt` signs `redis.crt`).
    tls: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// `None` (with a message) where `redis-server` is not installed, which fails the test
    /// under CI (`CI` set).
    fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// The same, speaking TLS only, with a certificate for 127.0.0.1 signed by `ca` (its
    /// folder keeps `redis.crt` and `redis.key`).
    fn start_tls(ca: &TestCa) -> Option<Self> {
        ca.issue("redis", "IP:127.0.0.1");
        Self::start_with(Some(ca.dir.to_path_buf()))
    }

    fn start_with(tls: Option<std::path::PathBuf>) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Ok(child) = spawn(port, tls.as_deref()) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server not found: install Redis"
            );
            eprintln!("skipped: redis-server not found (install Redis)");
            return None;
        };
        let server = Self { child, port, tls };
        server.wait_until_up();
        Some(server)
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Runs `redis-cli` against this server; its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        if let Some(dir) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(dir.join("ca.crt"));
        }
        let output = command
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli not found: install Redis");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Stops it: its data is lost.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port.
    fn start_again(&mut self) {
        self.child = spawn(self.port, self.tls.as_deref()).unwrap();
        self.wait_until_up();
    }

    fn wait_until_up(&self) {
        let started = Instant::now();
        while self.cli(&["PING"]) != "PONG" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (STOP freezes it, CONT thaws it).
    fn signal(&self, signal: &str) {
        assert!(self.send(signal), "kill -{signal} failed");
    }

    /// Whether `signal` reached it (no longer, once it is stopped).
    fn send(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// Starts `redis-server` on `port` (TLS only with the certificates in `tls`), keeping
/// nothing on disk.
fn spawn(port: u16, tls: Option<&std::path::Path>) -> std::io::Result<Child> {
    let mut command = Command::new("redis-server");
    match tls {
        None => command.args(["--port", &port.to_string()]),
        Some(dir) => command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(dir.join("redis.crt"))
            .arg("--tls-key-file")
            .arg(dir.join("redis.key")),
    };
    command
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

impl Drop for RedisServer {
    /// Never panics: it also runs while a failed test unwinds, where a second panic would
    /// abort every test and leave the other tests' servers running.
    fn drop(&mut self) {
        self.send("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_web::test]
async fn what_one_replica_read_another_gets_from_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let a = spawn_app_with(&[LONG_TTL, ("TENANCY_REDIS_URL", &url)]).await;
    let b = svc::startup::prepare(&a.settings).await.unwrap();
    a.create_tenant("acme").await;
    let service_a = service!(a);
    let service_b = test::init_service(app(b.clone(), &a.settings)).await;

    let (status, _) = call!(service_a, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call!(service_b, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.cache_stats().lookups, 0, "{:?}", b.cache_stats());
    assert_eq!(
        b.shared_cache_stats().hits,
        1,
        "{:?}",
        b.shared_cache_stats()
    );
    let key = format!("tenancy:{}:tenant:acme", a.db.name);
    assert!(redis.cli(&["HGET", &key, "d"]).contains("\"active\""));
}

#[actix_web::test]
async fn with_redis_frozen_requests_succeed_health_says_so_and_nothing_stale_survives() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let app = spawn_app_with(&[LONG_TTL, ("TENANCY_REDIS_URL", &url)]).await;
    let acme = app.create_tenant("acme").await;
    let service = service!(app);
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let key = format!("tenancy:{}:tenant:acme", app.db.name);
    assert!(redis.cli(&["HGET", &key, "d"]).contains("\"active\""));

    // Frozen: every Redis operation times out.
    redis.signal("STOP");
    app.tenancy
        .suspend_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.create_tenant("globex").await;
    let (status, _) = call!(service, get "/api/notes", tenant = "globex");
    assert_eq!(
        status,
        StatusCode::OK,
        "a new tenant is served from the registry"
    );
    let (status, body) = health!(service);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(body["cache"]["shared"]["degraded"].is_string(), "{body}");
    assert!(
        body["cache"]["shared"]["errors"]["timeout"]
            .as_u64()
            .unwrap()
            >= 1,
        "{body}"
    );

    // Thawed: it still holds acme as active, which the service never told it otherwise.
    redis.signal("CONT");
    let started = Instant::now();
    while app.tenancy.shared_cache_stats().degraded.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "Redis is not used again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It was emptied before being used again: no stale acme.
    assert!(!redis.cli(&["HGET", &key, "d"]).contains("\"active\""));
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::FORBIDDEN);

    // And it is written again.
    app.tenancy
        .activate_tenant(
            &crate::helpers::operator(),
            &TenantIdentifier::parse("acme").unwrap(),
        )
        .await
        .unwrap();
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    assert!(redis.cli(&["HGET", &key, "d"]).contains("\"active\""));
}

#[actix_web::test]
async fn with_redis_stopped_requests_succeed_and_it_is_used_again_once_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let app = spawn_app_with(&[LONG_TTL, ("TENANCY_REDIS_URL", &url)]).await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let key = format!("tenancy:{}:tenant:acme", app.db.name);

    // Down: served from the registry; health says degraded.
    redis.stop();
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let stats = app.tenancy.shared_cache_stats();
    assert!(stats.degraded.is_some(), "{stats:?}");
    assert!(
        stats.errors["connection"] + stats.errors["timeout"] >= 1,
        "{stats:?}"
    );
    redis.start_again();

    // Back: the probe notices within a second or so, and Redis is written again.
    let started = Instant::now();
    while app.tenancy.shared_cache_stats().degraded.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "Redis is not used again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.tenancy
        .suspend_tenant(
            &crate::helpers::operator(),
            &TenantIdentifier::parse("acme").unwrap(),
        )
        .await
        .unwrap();
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(redis.cli(&["HGET", &key, "d"]).contains("\"suspended\""));
}

/// A Redis that takes longer to connect to than `TENANCY_REDIS_TIMEOUT` (a TLS handshake to
/// another zone, a loaded host): the first operations give up waiting, but the connection is
/// made all the same, and Redis is used from then on.
#[actix_web::test]
async fn a_redis_slower_to_connect_to_than_the_timeout_is_used_once_connected() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = slow_proxy(redis.port, Duration::from_millis(400), Duration::ZERO);
    let url = format!("redis://127.0.0.1:{proxy}/0");
    let app = spawn_app_with(&[
        LONG_TTL,
        ("TENANCY_REDIS_URL", &url),
        ("TENANCY_REDIS_TIMEOUT", "100"),
    ])
    .await;
    app.create_tenant("acme").await;
    app.create_tenant("later").await;
    let service = service!(app);

    // The first request's lookup gives up on Redis after 100 ms: served from the registry.
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let stats = app.tenancy.shared_cache_stats();
    assert!(stats.degraded.is_some(), "{stats:?}");
    assert!(stats.errors["timeout"] >= 1, "{stats:?}");

    // The connection it started is made meanwhile, and the probe finds it.
    let started = Instant::now();
    while app.tenancy.shared_cache_stats().degraded.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "Redis is never used: {:?}",
            app.tenancy.shared_cache_stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = app.tenancy.shared_cache_stats().errors;
    let (status, _) = call!(service, get "/api/notes", tenant = "later");
    assert_eq!(status, StatusCode::OK);
    let key = format!("tenancy:{}:tenant:later", app.db.name);
    assert!(redis.cli(&["HGET", &key, "d"]).contains("\"active\""));
    assert_eq!(app.tenancy.shared_cache_stats().errors, errors);
}

/// A TCP proxy to `port` on a free port of its own, that lets each connection through only
/// after `connect`, and holds each answer `answer` before passing it on.
fn slow_proxy(port: u16, connect: Duration, answer: Duration) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap().port();
    let pipe = move |mut from: TcpStream, mut to: TcpStream, hold: Duration| {
        let mut buffer = [0; 16 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer) {
            std::thread::sleep(hold);
            if to.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    };
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(connect);
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    std::thread::spawn(move || pipe(c, s, Duration::ZERO));
                    pipe(server, client, answer);
                }
            });
        }
    });
    proxy
}

/// A Redis whose answers take longer than the Redis client's own default (500 ms) but
/// less than `TENANCY_REDIS_TIMEOUT`: every operation waits for them and Redis is used.
#[actix_web::test]
async fn a_redis_slower_to_answer_than_half_a_second_is_used_within_a_longer_timeout() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = slow_proxy(redis.port, Duration::ZERO, Duration::from_millis(700));
    let url = format!("redis://127.0.0.1:{proxy}/0");
    let app = spawn_app_with(&[
        LONG_TTL,
        ("TENANCY_REDIS_URL", &url),
        ("TENANCY_REDIS_TIMEOUT", "5000"),
    ])
    .await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let stats = app.tenancy.shared_cache_stats();
    assert!(stats.degraded.is_none(), "{stats:?}");
    assert_eq!(stats.errors.values().sum::<u64>(), 0, "{stats:?}");
    let key = format!("tenancy:{}:tenant:acme", app.db.name);
    assert!(redis.cli(&["HGET", &key, "d"]).contains("\"active\""));
}

#[actix_web::test]
async fn rediss_is_used_with_the_ca_that_signs_redis_and_refused_with_another() {
    let ca = TestCa::new("redis-test-ca");
    let Some(redis) = RedisServer::start_tls(&ca) else {
        return;
    };
    let (url, ca) = (redis.url(), ca.cert());
    let app = spawn_app_with(&[
        LONG_TTL,
        ("TENANCY_REDIS_URL", &url),
        ("TENANCY_REDIS_CA_FILE", ca.to_str().unwrap()),
    ])
    .await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let key = format!("tenancy:{}:tenant:acme", app.db.name);
    assert!(redis.cli(&["HGET", &key, "d"]).contains("\"active\""));
    assert!(app.tenancy.shared_cache_stats().degraded.is_none());

    // A CA that did not sign Redis's certificate: nothing is sent to it, requests are
    // still served.
    let other = TestCa::new("another-ca");
    let wrong = other.cert();
    let settings = {
        let mut env: std::collections::HashMap<String, String> = app
            .db
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.insert("TENANCY_REDIS_URL".into(), url.clone());
        env.insert(
            "TENANCY_REDIS_CA_FILE".into(),
            wrong.to_str().unwrap().into(),
        );
        svc::config::Settings::from_env_map(env).unwrap().0
    };
    let refused = svc::startup::prepare(&settings).await.unwrap();
    let service = test::init_service(svc::startup::app(refused.clone(), &settings)).await;
    let (status, _) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    let shared = refused.shared_cache_stats();
    assert!(shared.degraded.is_some(), "{shared:?}");
    assert_eq!(shared.hits, 0, "{shared:?}");
}

/// The status of `GET /api/notes` for `tenant`, and its `RateLimit` header.
macro_rules! limited_notes {
    ($service:expr, $tenant:expr) => {
        async {
            let request = for_tenant(test::TestRequest::get(), "/api/notes", $tenant);
            let response = test::call_service(&$service, request.to_request()).await;
            let state = (response.headers().get("ratelimit"))
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            (response.status(), state)
        }
    };
}

#[actix_web::test]
async fn two_replicas_sharing_redis_together_admit_no_more_than_the_limit() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let a = spawn_app_with(&[
        ("TENANCY_REDIS_URL", &url),
        ("TENANCY_RATE_LIMIT", "1"),
        ("TENANCY_RATE_LIMIT_BURST", "10"),
    ])
    .await;
    let b = svc::startup::prepare(&a.settings).await.unwrap();
    let acme = a.create_tenant("acme").await;
    let service_a = service!(a);
    let service_b = test::init_service(app(b.clone(), &a.settings)).await;

    let mut served = [0, 0];
    for i in 0..30 {
        let (status, _) = match i % 2 {
            0 => limited_notes!(service_a, "acme").await,
            _ => limited_notes!(service_b, "acme").await,
        };
        if status == StatusCode::OK {
            served[i % 2] += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    // Ten in all (within the second this takes), shared between the two.
    assert_eq!(served[0] + served[1], 10, "{served:?}");
    assert!(served[0] > 0 && served[1] > 0, "{served:?}");
    assert!(a.tenancy.rate.limited() > 0 && b.rate.limited() > 0);
    let key = format!("tenancy:{}:rate:{}", a.db.name, acme.id);
    assert_ne!(redis.cli(&["GET", &key]), "");
}

#[actix_web::test]
async fn with_redis_frozen_rate_limits_fail_open_or_closed_as_set() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    for (mode, frozen) in [
        ("open", StatusCode::OK),
        ("closed", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let app = spawn_app_with(&[
            ("TENANCY_REDIS_URL", &url),
            ("TENANCY_REDIS_TIMEOUT", "200"),
            ("TENANCY_RATE_LIMIT", "100"),
            ("TENANCY_RATE_LIMIT_REDIS_DOWN", mode),
        ])
        .await;
        app.create_tenant("acme").await;
        let service = service!(app);
        let (status, state) = limited_notes!(service, "acme").await;
        assert_eq!(status, StatusCode::OK, "{mode}");
        assert!(state.is_some(), "{mode}: limited while Redis answers");

        redis.signal("STOP");
        for _ in 0..3 {
            let (status, state) = limited_notes!(service, "acme").await;
            assert_eq!(status, frozen, "{mode}");
            assert_eq!(state, None, "{mode}: no limit to show");
        }
        let response = test::call_service(
            &service,
            test::TestRequest::get().uri("/health").to_request(),
        )
        .await;
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["status"], "degraded", "{body}");
        assert_eq!(body["rate_limit"]["when_redis_is_down"], mode, "{body}");
        let degraded = body["rate_limit"]["degraded"].as_str().unwrap_or_default();
        assert!(degraded.starts_with("Redis cannot say"), "{body}");

        // Thawed: limited again once Redis is used again.
        redis.signal("CONT");
        let started = Instant::now();
        while app.tenancy.shared_cache_stats().degraded.is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{mode}: Redis is not used again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, state) = limited_notes!(service, "acme").await;
        assert_eq!(status, StatusCode::OK, "{mode}");
        assert!(state.is_some(), "{mode}");
    }
}
