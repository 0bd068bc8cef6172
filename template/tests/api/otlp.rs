//! Trace export: the real server, started with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an
//! OTLP/HTTP receiver of the test's own, sends the request's span with its tenant, as a
//! child of the caller's `traceparent`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cli::{Server, run};
use crate::helpers::{TestDatabase, binary};

/// What the receiver was sent: each request's path and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Accepts OTLP/HTTP requests on a free port, answers 200 to each, keeps them.
fn start_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let kept = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let kept = kept.clone();
            std::thread::spawn(move || serve_connection(stream, &kept));
        }
    });
    (port, received)
}

/// Reads HTTP/1.1 requests (with `Content-Length` bodies) until the client closes.
fn serve_connection(stream: TcpStream, kept: &Received) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        kept.lock().unwrap().push((path, body));
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[actix_web::test]
async fn the_request_span_reaches_an_otlp_receiver_with_its_tenant_and_parent() {
    let db = TestDatabase::create().await;
    assert!(
        run(&db, &["tenant", "create", "acme", "--name", "Acme"])
            .status
            .success()
    );
    let (receiver_port, received) = start_receiver();
    let mut server = Server(
        Command::new(binary())
            .arg("serve")
            .env_clear()
            .envs(db.env())
            .env("TENANCY_HOST", "127.0.0.1")
            .env("TENANCY_PORT", "0")
            .env("TENANCY_WORKERS", "1")
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{receiver_port}"),
            )
            .env("OTEL_SERVICE_NAME", "tenancy-under-test")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = server.0.stdout.take().unwrap();
    let port = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let event: serde_json::Value = serde_json::from_str(&line).ok()?;
            (event["message"] == "listening").then(|| event["port"].as_u64())?
        })
        .expect("the server did not start");

    // The caller's trace: 4bf92f35..., its span 00f067aa0ba902b7.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let request = crate::helpers::raw_request("/api/notes", "acme").replace(
        "Connection: close",
        &format!("traceparent: {traceparent}\r\nConnection: close"),
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // Stopping sends what is still buffered.
    let killed = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    while server.0.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let received = received.lock().unwrap();
    let traces: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(path, _)| path == "/v1/traces")
        .map(|(_, body)| body)
        .collect();
    assert!(
        !traces.is_empty(),
        "nothing reached /v1/traces: {:?}",
        received.len()
    );
    let raw_trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let span = traces
        .iter()
        .find(|body| contains(body, b"tenant.identifier"))
        .expect("no span with tenant.identifier");
    assert!(contains(span, b"acme"));
    assert!(contains(span, b"request_id"));
    assert!(
        contains(span, &raw_trace_id),
        "the caller's trace was not continued"
    );
    assert!(
        contains(span, b"tenancy-under-test"),
        "OTEL_SERVICE_NAME was not used"
    );
}
