//! Load with every answer checked, for ci/bench/pooler.sh (copied into a generated
//! `acme-api` project as an example; not part of the template): CHECK_CLIENTS clients
//! (keep-alive HTTP/1.1 connections) send `GET /api/notes?limit=20` for tenants
//! t0..t(CHECK_TENANTS-1), each request another tenant, for CHECK_SECONDS seconds. The
//! benchmark seeds every note of tenant `tN` with a title starting `tN note `: every row
//! of every 200 is checked against the tenant the request named.
//!
//! Prints one line: requests, answers by status, rows checked, rows of another tenant.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Default)]
struct Tally {
    requests: u64,
    statuses: BTreeMap<String, u64>,
    rows: u64,
    foreign: u64,
}

/// One request on `stream`; the status and the body.
async fn get(stream: &mut BufReader<TcpStream>, tenant: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let request = format!(
        "GET /api/notes?limit=20 HTTP/1.1\r\nHost: localhost\r\nX-Tenant-ID: {tenant}\r\n\r\n"
    );
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::other("closed"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok((status, body))
}

async fn client(address: String, tenants: usize, start: usize, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut next = start;
    let mut stream = None;
    while Instant::now() < until {
        let tenant = format!("t{}", next % tenants);
        next += 1;
        if stream.is_none() {
            match TcpStream::connect(&address).await {
                Ok(s) => stream = Some(BufReader::new(s)),
                Err(_) => {
                    *tally.statuses.entry("connect error".into()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(open) = stream.as_mut() else { continue };
        tally.requests += 1;
        match get(open, &tenant).await {
            Ok((status, body)) => {
                *tally.statuses.entry(status.to_string()).or_default() += 1;
                if status == 200 {
                    let notes: Vec<serde_json::Value> =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let prefix = format!("{tenant} note ");
                    for note in notes {
                        tally.rows += 1;
                        let title = note["title"].as_str().unwrap_or_default();
                        if !title.starts_with(&prefix) {
                            tally.foreign += 1;
                        }
                    }
                }
            }
            Err(_) => {
                *tally.statuses.entry("io error".into()).or_default() += 1;
                stream = None;
            }
        }
    }
    tally
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("CHECK_ADDRESS")?;
    let tenants: usize = std::env::var("CHECK_TENANTS")?.parse()?;
    let clients: usize = std::env::var("CHECK_CLIENTS")?.parse()?;
    let seconds: u64 = std::env::var("CHECK_SECONDS")?.parse()?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(address.clone(), tenants, i * 7, until)))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await?;
        total.requests += tally.requests;
        total.rows += tally.rows;
        total.foreign += tally.foreign;
        for (status, n) in tally.statuses {
            *total.statuses.entry(status).or_default() += n;
        }
    }
    let statuses: Vec<String> = total
        .statuses
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect();
    println!(
        "requests {} | {} | rows checked {} | rows of another tenant {}",
        total.requests,
        statuses.join(", "),
        total.rows,
        total.foreign
    );
    Ok(())
}
