//! What only the database-per-tenant strategy has: a database per tenant, and many
//! tenants served under a hard cap on connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use actix_web::http::StatusCode;
use common::{query_url, server_url, spawn_app, spawn_app_with};
use futures_util::FutureExt;
use futures_util::future::join_all;
use serde_json::json;

async fn database_exists(name: &str) -> bool {
    let rows = query_url(
        &server_url(),
        &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
    )
    .await
    .unwrap();
    !rows.is_empty()
}

#[actix_web::test]
async fn each_tenant_gets_a_database_of_its_own_and_destroy_drops_it() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let name = format!("{}acme", app.db.tenant_database_prefix);
    assert!(database_exists(&name).await);
    let recorded = app
        .db
        .query(&format!(
            "SELECT database_name FROM tenancy.tenant_databases WHERE tenant_id = '{}'",
            acme.id
        ))
        .await;
    assert_eq!(recorded, vec![vec![Some(name.clone())]]);

    let service = service!(app);
    let (status, _) =
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "t"}));
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.db.notes_of(&acme).await, Some(1));

    app.tenancy.delete_tenant(&acme.identifier).await.unwrap();
    app.tenancy
        .destroy_tenant(&acme.identifier, "acme")
        .await
        .unwrap();
    assert!(!database_exists(&name).await);
    assert!(
        app.db
            .query("SELECT 1 FROM tenancy.tenant_databases")
            .await
            .is_empty()
    );
}

#[actix_web::test]
async fn two_hundred_tenants_are_served_in_turn_under_a_cap_of_forty_connections() {
    const TENANTS: usize = 200;
    const CAP: u32 = 40;
    let app = spawn_app_with(&[
        ("TENANCY_MAX_TOTAL_CONNECTIONS", "40"),
        ("TENANCY_DATABASE_POOL_SIZE", "2"),
        ("TENANCY_DATABASE_MAX_OVERFLOW", "0"),
        ("TENANCY_DATABASE_POOL_TIMEOUT", "30"),
        ("TENANCY_TENANT_POOL_IDLE_TIMEOUT", "1"),
    ])
    .await;
    let names: Vec<String> = (0..TENANTS).map(|i| format!("many_{i:03}")).collect();
    for name in &names {
        app.create_tenant(name).await;
    }
    let service = service!(app);

    // Watch PostgreSQL's own count of the service's connections while the tenants are used.
    let peak = Rc::new(Cell::new(0));
    let done = Rc::new(Cell::new(false));
    let watcher = {
        let (peak, done, db) = (peak.clone(), done.clone(), &app.db);
        async move {
            while !done.get() {
                peak.set(peak.get().max(db.open_connections().await));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let usage = async {
        // Fifty tenants at a time, each writing then reading its own note.
        for chunk in names.chunks(50) {
            let requests = chunk.iter().map(|name| {
                let service = &service;
                async move {
                    let (status, body) = call!(service, post "/api/notes", tenant = name.as_str(),
                        json = json!({"title": name}));
                    assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
                    let (status, body) = call!(service, get "/api/notes", tenant = name.as_str());
                    assert_eq!(status, StatusCode::OK, "{name}: {body}");
                    assert_eq!(body.as_array().unwrap().len(), 1, "{name}: {body}");
                    assert_eq!(body[0]["title"], name.as_str());
                }
                .boxed_local()
            });
            join_all(requests).await;
        }
        done.set(true);
    };
    tokio::join!(watcher, usage);
    assert!(
        peak.get() <= CAP + app.tenancy.settings.database.control_pool_size,
        "peak {} connections",
        peak.get()
    );
    assert!(app.tenancy.pool_stats().open_connections <= CAP);

    // Idle pools close (idle timeout 1 s, reaper every second).
    let mut open = u32::MAX;
    for _ in 0..50 {
        open = app.tenancy.pool_stats().open_connections;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "idle tenant connections were not closed");
}
