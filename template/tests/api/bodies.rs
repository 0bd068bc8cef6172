//! Request bodies are read whole before a handler runs: a client that sends its body
//! slowly holds no database connection, and is answered 408 once its time is up; a body
//! too large is answered 413; a request for an unknown tenant is answered before its body
//! is read. Each answer is problem+json.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test;

use crate::helpers::*;

/// The head of `POST /api/notes` for `tenant`, announcing `length` bytes of JSON.
fn post_head(tenant: &str, length: usize) -> String {
    raw_request("/api/notes", tenant)
        .replacen("GET ", "POST ", 1)
        .replacen(
            "\r\n\r\n",
            &format!("\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"),
            1,
        )
}

/// A client that announces a 100 kB note for `tenant`, then sends a byte every 200 ms
/// until it is answered; the answer.
fn trickle(port: u16, tenant: &str) -> JoinHandle<String> {
    let head = post_head(tenant, 100_000);
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(b"{\"title\": \"").unwrap();
        let (mut answer, mut buffer) = (Vec::new(), [0; 1024]);
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if !answer.is_empty() {
                        // Answered, and the server keeps the connection: enough.
                        break;
                    }
                    let _ = stream.write_all(b"a");
                }
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
}

#[actix_web::test]
async fn clients_that_send_their_bodies_slowly_hold_no_connection_and_are_answered_408() {
    let app = spawn_app_with(&[
        ("TENANCY_DATABASE_POOL_SIZE", "2"),
        ("TENANCY_DATABASE_MAX_OVERFLOW", "0"),
        ("TENANCY_MAX_TOTAL_CONNECTIONS", "2"),
        ("TENANCY_DATABASE_POOL_TIMEOUT", "1"),
        ("TENANCY_REQUEST_BODY_TIMEOUT", "4"),
    ])
    .await;
    app.create_tenant("slow_a").await;
    app.create_tenant("slow_b").await;
    let quiet = app.create_tenant("quiet").await;
    let port = serve(&app);

    // Twenty slow clients of two tenants, ten times the two connections there are, and
    // one of a tenant that does not exist.
    let slow: Vec<_> = (0..20)
        .map(|i| trickle(port, ["slow_a", "slow_b"][i % 2]))
        .collect();
    let unknown = trickle(port, "nobody");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Meanwhile another tenant is served, reads and writes (each would wait for a
    // connection for 1 s and get 503 if the slow clients held them).
    let served = std::thread::spawn(move || {
        for i in 0..10 {
            let listed = send(port, &raw_request("/api/notes", "quiet"));
            assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
            let body = serde_json::json!({ "title": format!("note {i}") }).to_string();
            let created = send(port, &format!("{}{body}", post_head("quiet", body.len())));
            assert!(created.starts_with("HTTP/1.1 201"), "{created}");
        }
    });
    served.join().unwrap();
    assert!(
        slow.iter().all(|client| !client.is_finished()),
        "a slow client was answered before its time was up"
    );
    assert_eq!(app.db.notes_of(&quiet).await, Some(10));

    // The unknown tenant's request was answered before its body was read.
    assert!(unknown.is_finished());
    let answer = unknown.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    for client in slow {
        let answer = client.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(answer.contains("did not arrive within 4 s"), "{answer}");
    }
}

#[actix_web::test]
async fn a_body_larger_than_the_limit_is_answered_413() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let service = test::init_service(svc::startup::app(app.tenancy.clone(), &app.settings)).await;
    let limit = svc::tenancy::middleware::BodyRead::LIMIT;
    let title = "a".repeat(limit);
    let request = for_tenant(test::TestRequest::post(), "/api/notes", "acme")
        .insert_header(("Content-Type", "application/json"))
        .set_payload(serde_json::json!({ "title": title }).to_string())
        .to_request();
    let response = test::call_service(&service, request).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    let problem: serde_json::Value = test::read_body_json(response).await;
    assert_eq!(
        problem["detail"],
        format!("the request body may be at most {limit} bytes")
    );
    assert_eq!(app.db.notes_of(&acme).await, Some(0));
}
