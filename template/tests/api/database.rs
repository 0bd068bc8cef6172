//! What only the database-per-tenant strategy has: a database per tenant, and many
//! tenants served under a hard cap on connections.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::helpers::{
    TestDatabase, query_url, server_exec_on, server_url, spawn_app, spawn_app_on, spawn_app_with,
};
use crate::servers::{OtherServer, create_on, spawn_with_other_server};
use crate::tls::TestCa;
use actix_web::http::StatusCode;
use futures_util::FutureExt;
use futures_util::future::join_all;
use serde_json::json;

use svc::domain::{Isolation, TenantIdentifier, TenantStatus};
use svc::tenancy::isolation::ServerAddress;
use svc::tenancy::lifecycle::{LifecycleError, NewTenant};
use svc::tenancy::registry;

/// The service's connections to `database` on the other server.
async fn connections_to(other: &OtherServer, database: &str) -> usize {
    let sql = format!("SELECT 1 FROM pg_stat_activity WHERE datname = '{database}'");
    query_url(&other.admin_url, &sql).await.unwrap().len()
}

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

    app.tenancy
        .delete_tenant(&crate::helpers::operator(), &acme.identifier)
        .await
        .unwrap();
    app.tenancy
        .destroy_tenant(&crate::helpers::operator(), &acme.identifier, "acme")
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
    app.create_tenants(&names).await;
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
    // The tenant cap, the control pool and the connection that listens for tenant changes.
    assert!(
        peak.get() <= CAP + app.tenancy.settings.database.control_pool_size + 1,
        "peak {} connections",
        peak.get()
    );
    assert!(app.tenancy.connection_stats().tenant.open_connections <= CAP);
    // Connections were closed one at a time to make room, never whole tenants' sets.
    assert!(app.tenancy.connection_stats().tenant.evicted > 0);

    // Idle connections close (idle timeout 1 s, looked at every half second).
    let mut open = u32::MAX;
    for _ in 0..50 {
        open = app.tenancy.connection_stats().tenant.open_connections;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "idle tenant connections were not closed");
}

#[actix_web::test]
async fn only_listed_servers_are_accepted_for_a_new_tenant() {
    let app = spawn_app().await;
    // No list: every tenant is on the default server, whatever a request says.
    let refused = create_on(&app, "far", "attacker.example:5432").await;
    match refused {
        Err(LifecycleError::Invalid(why)) => {
            assert!(why.contains("TENANCY_DATABASE_SERVERS"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // Refused before anything was recorded.
    assert!(app.tenancy.list_tenants().await.unwrap().is_empty());

    let listed = spawn_app_with(&[("TENANCY_DATABASE_SERVERS", "db2.internal:5432")]).await;
    let refused = create_on(&listed, "far", "db3.internal:5432").await;
    assert!(
        matches!(refused, Err(LifecycleError::Invalid(_))),
        "{refused:?}"
    );
}

#[actix_web::test]
async fn a_tenant_placed_on_another_server_is_provisioned_served_and_destroyed_there() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let server = ServerAddress::parse(&other.address).unwrap();
    let far = create_on(&app, "far", &other.address).await.unwrap();
    let near = app.create_tenant("near").await;
    // The tenant says where it is: its database's server, or null for the default one;
    // so does `tenant list`.
    assert_eq!(far.server.as_ref(), Some(&server));
    assert_eq!(near.server, None);
    let listed = std::process::Command::new(crate::helpers::binary())
        .args(["tenant", "list"])
        .env_clear()
        .envs(app.db.env())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let line_of = |name: &str| {
        let line = listed
            .lines()
            .find(|line| line.contains(&format!(" {name} ")));
        line.unwrap_or_else(|| panic!("{name} is not listed: {listed}"))
            .split_whitespace()
            .nth(4)
            .map(str::to_owned)
    };
    assert_eq!(line_of("far"), Some(other.address.clone()), "{listed}");
    assert_eq!(line_of("near").as_deref(), Some("default"), "{listed}");
    let far_db = format!("{}far", app.db.tenant_database_prefix);
    let near_db = format!("{}near", app.db.tenant_database_prefix);

    // The record names the server; the database is there, and only there.
    let recorded = app
        .db
        .query(&format!(
            "SELECT database_name, server FROM tenancy.tenant_databases WHERE tenant_id = '{}'",
            far.id
        ))
        .await;
    assert_eq!(
        recorded,
        vec![vec![Some(far_db.clone()), Some(other.address.clone())]]
    );
    assert!(other.has_database(&far_db).await);
    assert!(
        !database_exists(&far_db).await,
        "{far_db} is on the main server"
    );
    assert!(!other.has_database(&near_db).await);
    assert!(database_exists(&near_db).await);

    // Both are served by the one service, each from its own database.
    let service = service!(app);
    for name in ["far", "near"] {
        let (status, body) =
            call!(service, post "/api/notes", tenant = name, json = json!({"title": name}));
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
    }
    for name in ["far", "near"] {
        let (status, body) = call!(service, get "/api/notes", tenant = name);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_array().unwrap().len(), 1, "{name}: {body}");
        assert_eq!(body[0]["title"], name);
    }
    assert!(connections_to(&other, &far_db).await > 0);
    let far_notes = query_url(
        &format!("{}/{far_db}", other.base_url),
        "SELECT title FROM notes",
    )
    .await
    .unwrap();
    assert_eq!(far_notes, vec![vec![Some("far".to_string())]]);
    assert_eq!(app.db.notes_of(&near).await, Some(1));

    // Asking for another server for a tenant placed already is a conflict.
    let again = create_on(&app, "far", "elsewhere.invalid:5432").await;
    assert!(
        matches!(again, Err(LifecycleError::Conflict(_))),
        "{again:?}"
    );

    // Destroy drops it on its server.
    app.tenancy
        .delete_tenant(&crate::helpers::operator(), &far.identifier)
        .await
        .unwrap();
    app.tenancy
        .destroy_tenant(&crate::helpers::operator(), &far.identifier, "far")
        .await
        .unwrap();
    assert!(!other.has_database(&far_db).await);
    assert!(database_exists(&near_db).await);
}

#[actix_web::test]
async fn a_new_tenant_goes_to_the_server_with_the_fewest_tenants() {
    let db = crate::helpers::TestDatabase::create().await;
    let Some(other) = OtherServer::start(&db).await else {
        return;
    };
    let app =
        crate::helpers::spawn_app_on(db, &[("TENANCY_DATABASE_SERVERS", &other.address)]).await;
    let server_of = |tenant: svc::domain::Tenant| {
        let app = &app;
        async move {
            app.db
                .query(&format!(
                    "SELECT server FROM tenancy.tenant_databases WHERE tenant_id = '{}'",
                    tenant.id
                ))
                .await[0][0]
                .clone()
        }
    };
    // A tie goes to the default server; then each goes where fewer are.
    let here = Some(other.address.clone());
    let mut placed = Vec::new();
    for name in ["t1", "t2", "t3", "t4"] {
        placed.push(server_of(app.create_tenant(name).await).await);
    }
    assert_eq!(placed, [None, here.clone(), None, here.clone()]);
    // A tenant that names a server goes there, whatever the counts say.
    let named = create_on(&app, "t5", &other.address).await.unwrap();
    assert_eq!(server_of(named).await, here);
    assert_eq!(server_of(app.create_tenant("t6").await).await, None);
    // Each is served from its own database, wherever it is.
    let service = service!(app);
    for name in ["t1", "t2", "t5", "t6"] {
        let (status, body) =
            call!(service, post "/api/notes", tenant = name, json = json!({"title": name}));
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
    }
    // Creations at the same time (four at once) each count the ones before: three and
    // three, as one at a time; each tenant names the server its database is on.
    let names: Vec<String> = (7..=12).map(|i| format!("t{i}")).collect();
    let mut there = 0;
    for tenant in app.create_tenants(&names).await {
        let named = tenant.server.clone().map(String::from);
        let recorded = server_of(tenant).await;
        assert_eq!(named, recorded);
        there += usize::from(recorded == here);
    }
    assert_eq!(there, 3);

    // `default`: every tenant that names none on the default server.
    let pinned = spawn_app_with(&[
        ("TENANCY_DATABASE_SERVERS", &other.address),
        ("TENANCY_DATABASE_PLACEMENT", "default"),
    ])
    .await;
    for name in ["p1", "p2"] {
        let tenant = pinned.create_tenant(name).await;
        let recorded = pinned
            .db
            .query(&format!(
                "SELECT server FROM tenancy.tenant_databases WHERE tenant_id = '{}'",
                tenant.id
            ))
            .await;
        assert_eq!(recorded, vec![vec![None]], "{name}");
    }
}

#[actix_web::test]
async fn an_interrupted_provisioning_completes_on_the_server_recorded_first() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let server = ServerAddress::parse(&other.address).unwrap();
    let far = TenantIdentifier::parse("far").unwrap();
    // A crash after the registry row (with the server chosen for it) was written, before
    // the database was created.
    let mut conn = app.tenancy.control.get().await.unwrap();
    let half = registry::insert_or_get(
        &mut conn,
        &far,
        "Far",
        Isolation::Database,
        &json!({}),
        Some(&server),
    )
    .await
    .unwrap();
    drop(conn);
    let far_db = format!("{}far", app.db.tenant_database_prefix);
    assert!(!other.has_database(&far_db).await);

    // A retry that names another server is refused; one that names none completes the
    // provisioning where the record says.
    let elsewhere = app
        .tenancy
        .create_tenant(
            &crate::helpers::operator(),
            NewTenant {
                server: Some(ServerAddress::parse("elsewhere.invalid").unwrap()),
                ..NewTenant::new(far.clone(), "Far")
            },
        )
        .await;
    assert!(
        matches!(elsewhere, Err(LifecycleError::Conflict(_))),
        "{elsewhere:?}"
    );
    let done = app
        .tenancy
        .create_tenant(&crate::helpers::operator(), NewTenant::new(far, "Far"))
        .await
        .unwrap();
    assert_eq!((done.id, done.status), (half.id, TenantStatus::Active));
    assert!(other.has_database(&far_db).await);
    assert!(!database_exists(&far_db).await);
}

#[test]
fn a_server_address_is_a_host_and_port_and_never_credentials() {
    for good in [
        "db2",
        "db2.internal:5432",
        "10.0.0.7:6432",
        "[::1]:5433",
        "DB2.Example.com",
    ] {
        assert!(ServerAddress::parse(good).is_ok(), "{good}");
    }
    assert_eq!(
        ServerAddress::parse("DB2.Example.com").unwrap().as_str(),
        "db2.example.com"
    );
    for bad in [
        "",
        "app:secret@db2",
        "postgres://db2",
        "db2:0",
        "db2:65536",
        "db2:port",
        "db2/other",
        "-db2",
        "db 2",
        "db2;drop",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[not-ip]:5432",
        "db2:5432:1",
    ] {
        assert!(ServerAddress::parse(bad).is_err(), "{bad}");
    }
    // The admin API and the CLI take it through the same parser.
    let new: Result<NewTenant, _> = serde_json::from_value(
        json!({"identifier": "far", "name": "Far", "server": "app:secret@db2"}),
    );
    assert!(new.is_err());
}

#[actix_web::test]
async fn the_service_refuses_a_superuser_or_an_owner_of_tenant_databases_as_its_role() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    app.tenancy.check_app_role().await.unwrap();
    app.assert_the_owner_is_refused_as_app_role("superuser")
        .await;
    // The application role made the owner of a tenant's database.
    crate::helpers::server_exec(&format!(
        "ALTER DATABASE \"{}acme\" OWNER TO \"{}\"",
        app.db.tenant_database_prefix, app.db.app_role
    ))
    .await;
    let refusal = app.tenancy.check_app_role().await.unwrap_err().to_string();
    assert!(refusal.contains("owns 1 tenant databases"), "{refusal}");
}

#[actix_web::test]
async fn a_tenant_on_another_server_is_reached_with_the_templates_sslmode() {
    // Two servers taking TCP over TLS only, with certificates for 127.0.0.1 from one CA.
    let ca = TestCa::new("tenancy-test-ca");
    let (cert, key) = ca.issue("server", "IP:127.0.0.1");
    let (Some(main), Some(far)) = (
        Cluster::start_tls(&cert, &key),
        Cluster::start_tls(&cert, &key),
    ) else {
        return;
    };
    let db = TestDatabase::create_on(main.socket_url()).await;
    let (role, password, name) = (
        db.app_role.clone(),
        db.app_password.clone(),
        db.name.clone(),
    );
    server_exec_on(
        &far.socket_url(),
        &format!(
            "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'"
        ),
    )
    .await;
    let tls = format!("sslmode=verify-full&sslrootcert={}", ca.cert().display());
    let on_main = |user: &str, database: &str| {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}?{tls}",
            main.port()
        )
    };
    let app_user = format!("{role}:{password}");
    let far_address = format!("127.0.0.1:{}", far.port());
    let app = spawn_app_on(
        db,
        &[
            ("TENANCY_DATABASE_URL", &on_main(&app_user, &name)),
            (
                "TENANCY_DATABASE_URL_TEMPLATE",
                &on_main(&app_user, "{database}"),
            ),
            (
                "TENANCY_MIGRATION_DATABASE_URL",
                &on_main("postgres", &name),
            ),
            ("TENANCY_DATABASE_SERVERS", &far_address),
        ],
    )
    .await;
    let placed = NewTenant {
        server: Some(ServerAddress::parse(&far_address).unwrap()),
        ..NewTenant::new(TenantIdentifier::parse("far").unwrap(), "Far")
    };
    app.tenancy
        .create_tenant(&crate::helpers::operator(), placed)
        .await
        .unwrap();
    app.create_tenant("near").await;
    let service = service!(app);
    for name in ["far", "near"] {
        let (status, body) =
            call!(service, post "/api/notes", tenant = name, json = json!({"title": name}));
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
    }
    let far_db = format!("{}far", app.db.tenant_database_prefix);
    let sessions = query_url(
        &far.socket_url(),
        &format!(
            "SELECT a.datname, s.ssl::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = '{role}'"
        ),
    )
    .await
    .unwrap();
    assert!(
        sessions
            .iter()
            .any(|s| s[0].as_deref() == Some(far_db.as_str())),
        "{sessions:?}"
    );
    assert!(
        sessions.iter().all(|s| s[1].as_deref() == Some("true")),
        "{sessions:?}"
    );
}
