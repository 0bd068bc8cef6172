//! The admin API: bearer-token auth, the full lifecycle over HTTP, and injection attempts.

use crate::helpers::{ADMIN_TOKEN, spawn_app};
use actix_web::http::StatusCode;
use actix_web::test;
use serde_json::{Value, json};

macro_rules! admin {
    ($service:expr, $method:ident $path:expr $(, json = $body:expr)?) => {
        admin!($service, $method $path, token = ADMIN_TOKEN $(, json = $body)?)
    };
    ($service:expr, $method:ident $path:expr, token = $token:expr $(, json = $body:expr)?) => ({
        #[allow(unused_mut)]
        let mut request = test::TestRequest::$method()
            .uri($path)
            .insert_header(("Authorization", format!("Bearer {}", $token)));
        $( request = request.set_json($body); )?
        let response = test::call_service(&$service, request.to_request()).await;
        let status = response.status();
        let body: Value = serde_json::from_slice(&test::read_body(response).await).unwrap_or(Value::Null);
        (status, body)
    });
}

#[actix_web::test]
async fn admin_requests_need_the_exact_token() {
    let app = spawn_app().await;
    let service = service!(app);
    let response = test::call_service(
        &service,
        test::TestRequest::get().uri("/admin/tenants").to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );
    for wrong in [
        "wrong",
        &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1],
        &format!("{ADMIN_TOKEN}x"),
    ] {
        let (status, _) = admin!(service, get "/admin/tenants", token = wrong);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let (status, _) = admin!(service, post "/admin/tenants", token = "wrong", json = json!({"identifier": "acme", "name": "Acme"}));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Two Authorization headers, even both right: neither is trusted.
    for second in ["wrong", ADMIN_TOKEN] {
        let request = test::TestRequest::get()
            .uri("/admin/tenants")
            .append_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .append_header(("Authorization", format!("Bearer {second}")))
            .to_request();
        let response = test::call_service(&service, request).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{second}");
    }
    assert_eq!(admin!(service, get "/admin/tenants").1, json!([]));
}

#[actix_web::test]
async fn the_whole_lifecycle_over_http() {
    let app = spawn_app().await;
    let service = service!(app);
    let (status, created) = admin!(service, post "/admin/tenants", json = json!({"identifier": "acme", "name": "Acme", "metadata": {"plan": "pro"} }));
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "active");
    assert_eq!(created["metadata"]["plan"], "pro");
    let (status, _) = admin!(service, post "/admin/tenants", json = json!({"identifier": "acme", "name": "Acme"}));
    assert_eq!(status, StatusCode::CONFLICT);

    assert_eq!(
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "t"})).0,
        StatusCode::CREATED
    );
    assert_eq!(
        admin!(service, post "/admin/tenants/acme/suspend").0,
        StatusCode::OK
    );
    assert_eq!(
        call!(service, get "/api/notes", tenant = "acme").0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin!(service, post "/admin/tenants/acme/activate").0,
        StatusCode::OK
    );
    assert_eq!(
        call!(service, get "/api/notes", tenant = "acme").0,
        StatusCode::OK
    );
    assert_eq!(
        admin!(service, post "/admin/tenants/acme/destroy", json = json!({"confirm": "acme"})).0,
        StatusCode::CONFLICT
    );
    let (status, deleted) = admin!(service, delete "/admin/tenants/acme");
    assert_eq!(
        (status, deleted["status"].clone()),
        (StatusCode::OK, json!("deleted"))
    );
    assert_eq!(
        admin!(service, post "/admin/tenants/acme/destroy").0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        admin!(service, post "/admin/tenants/acme/destroy", json = json!({"confirm": "nope"})).0,
        StatusCode::BAD_REQUEST
    );
    let acme = app
        .tenancy
        .get_tenant(&svc::domain::TenantIdentifier::parse("acme").unwrap())
        .await
        .unwrap();
    assert_eq!(app.db.notes_of(&acme).await, Some(1));
    assert_eq!(
        admin!(service, post "/admin/tenants/acme/destroy", json = json!({"confirm": "acme"})).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.db.notes_of(&acme).await.unwrap_or(0), 0);
    assert_eq!(app.db.schemas().await, app.baseline_schemas);
    assert_eq!(
        admin!(service, get "/admin/tenants/acme").0,
        StatusCode::NOT_FOUND
    );

    // Every operation above is in the trail, newest first, as the admin token's holder;
    // the destroyed tenant's history stays.
    let (status, history) = admin!(service, get "/admin/tenants/acme/history");
    assert_eq!(status, StatusCode::OK, "{history}");
    let ops: Vec<(String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["actor"], "api:admin", "{e}");
            assert_eq!(e["tenant_id"], json!(acme.id), "{e}");
            (
                e["operation"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("destroy", "ok"),
        ("destroy", "refused"),
        ("destroy", "refused"),
        ("delete", "ok"),
        ("destroy", "refused"),
        ("activate", "ok"),
        ("suspend", "ok"),
        ("create", "refused"),
        ("create", "ok"),
    ]
    .map(|(o, r)| (o.to_owned(), r.to_owned()));
    assert_eq!(ops, expected);
    let last = history[1]["id"].as_i64().unwrap();
    let (_, page) = admin!(
        service,
        get & format!("/admin/tenants/acme/history?limit=2&before={last}")
    );
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(page[0]["id"], history[2]["id"]);
    let (status, _) = admin!(service, get "/admin/tenants/acme/history?limit=0");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, none) = admin!(service, get "/admin/tenants/ghost/history");
    assert_eq!((status, none), (StatusCode::OK, json!([])));
}

#[actix_web::test]
async fn identifier_injection_attempts_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let service = service!(app);
    let long = "a".repeat(64);
    let attempts = [
        "a\"; drop schema public; --",
        "Acme",
        "ACME",
        "ac\u{e9}me",
        "\u{1F600}",
        long.as_str(),
        "",
        "tenant-1",
        "a b",
    ];
    for attempt in attempts {
        let (status, body) = admin!(service, post "/admin/tenants", json = json!({"identifier": attempt, "name": "x"}));
        assert!(status.is_client_error(), "{attempt:?}: {status}");
        assert_eq!(
            body["status"],
            status.as_u16(),
            "{attempt:?}: not problem+json: {body}"
        );
    }
    for path in [
        "/admin/tenants/public/destroy",
        "/admin/tenants/Public/destroy",
        "/admin/tenants/a%22%3B%20drop%20schema%20public%3B%20--/destroy",
    ] {
        let (status, _) = admin!(service, post path, json = json!({"confirm": "public"}));
        assert!(status.is_client_error(), "{path}: {status}");
    }
    assert_eq!(app.db.schemas().await, app.baseline_schemas);
    assert_eq!(admin!(service, get "/admin/tenants").1, json!([]));
}

#[actix_web::test]
async fn members_a_tenant_does_not_have_are_refused_not_ignored() {
    let app = spawn_app().await;
    let service = service!(app);
    // `isolation` is a choice only with hybrid (`server` is one with every strategy).
    let unknown = ["colour"{% if isolation != "hybrid" %}, "isolation"{% endif %}];
    for member in unknown {
        let mut body = json!({"identifier": "acme", "name": "Acme"});
        body[member] = json!("rls");
        let (status, problem) = admin!(service, post "/admin/tenants", json = body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{member}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(member),
            "{member}: {problem}"
        );
    }
    assert_eq!(admin!(service, get "/admin/tenants").1, json!([]));
}

#[actix_web::test]
async fn a_nul_character_in_a_new_tenant_is_a_400() {
    let app = spawn_app().await;
    let service = service!(app);
    for body in [
        json!({"identifier": "acme", "name": "Ac\u{0}me"}),
        json!({"identifier": "acme", "name": "Acme", "metadata": {"plan": "\u{0}"}}),
    ] {
        let (status, problem) = admin!(service, post "/admin/tenants", json = body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("NUL"),
            "{problem}"
        );
    }
    assert_eq!(admin!(service, get "/admin/tenants").1, json!([]));
}

#[actix_web::test]
async fn a_tenants_own_limits_are_set_shown_and_checked_over_http() {
    let app = spawn_app().await;
    let service = service!(app);
    let (status, _) = admin!(service, post "/admin/tenants", json = json!({"identifier": "acme", "name": "Acme"}));
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        admin!(service, get "/admin/tenants/acme").1["limits"],
        json!({"max_connections": null, "statement_timeout": null, "rate_limit": null, "rate_limit_burst": null})
    );

    let (status, tenant) =
        admin!(service, put "/admin/tenants/acme/limits", json = json!({"max_connections": 3}));
    assert_eq!(
        (status, &tenant["limits"]),
        (
            StatusCode::OK,
            &json!({"max_connections": 3, "statement_timeout": null, "rate_limit": null, "rate_limit_burst": null})
        )
    );
    assert_eq!(
        admin!(service, get "/admin/tenants/acme").1["limits"]["max_connections"],
        3
    );
    for bad in [
        json!({"max_connections": 0}),
        json!({"max_connections": 100_001}),
        json!({"max_connections": "3"}),
        json!({"max_conections": 3}),
        json!({"max_connections": 3, "statement_timeout": 0}),
        json!({"rate_limit": 1_000_001}),
        json!({"rate_limit": 10, "rate_limit_burst": -1}),
    ] {
        let (status, problem) = admin!(service, put "/admin/tenants/acme/limits", json = &bad);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        let named = ["max_con", "statement_timeout", "rate_limit"]
            .iter()
            .any(|f| detail.contains(f));
        assert!(named, "{bad}: {problem}");
    }
    // Nothing was lost: the limit set before stands.
    assert_eq!(
        admin!(service, get "/admin/tenants/acme").1["limits"]["max_connections"],
        3
    );
    let (status, tenant) = admin!(service, put "/admin/tenants/acme/limits", json = json!({}));
    assert_eq!(
        (status, &tenant["limits"]),
        (
            StatusCode::OK,
            &json!({"max_connections": null, "statement_timeout": null, "rate_limit": null, "rate_limit_burst": null})
        )
    );
    assert_eq!(
        admin!(service, put "/admin/tenants/nobody/limits", json = json!({})).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin!(service, put "/admin/tenants/acme/limits", token = "wrong", json = json!({})).0,
        StatusCode::UNAUTHORIZED
    );
}

#[actix_web::test]
async fn a_tenant_is_made_read_only_and_back_over_http() {
    let app = spawn_app().await;
    let service = service!(app);
    let (status, created) = admin!(service, post "/admin/tenants", json = json!({"identifier": "acme", "name": "Acme"}));
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["maintenance"], "off");

    let (status, tenant) =
        admin!(service, put "/admin/tenants/acme/maintenance", json = json!({"mode": "read_only"}));
    assert_eq!(
        (status, &tenant["maintenance"]),
        (StatusCode::OK, &json!("read_only"))
    );
    let note = json!({"title": "t"});
    let (status, _) = call!(service, post "/api/notes", tenant = "acme", json = &note);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    for bad in [
        json!({"mode": "readonly"}),
        json!({"mode": "off", "for": 5}),
        json!({}),
    ] {
        let (status, problem) = admin!(service, put "/admin/tenants/acme/maintenance", json = &bad);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
    let (status, tenant) =
        admin!(service, put "/admin/tenants/acme/maintenance", json = json!({"mode": "off"}));
    assert_eq!(
        (status, &tenant["maintenance"]),
        (StatusCode::OK, &json!("off"))
    );
    let (status, _) = call!(service, post "/api/notes", tenant = "acme", json = &note);
    assert_eq!(status, StatusCode::CREATED);
}

/// Least privilege: `serve` holding only the application role's URL (as the Kubernetes
/// base gives it) creates, serves and destroys tenants over the admin API, its
/// application role refused as before if it were the owner.
#[actix_web::test]
async fn a_service_without_the_owners_url_creates_and_destroys_tenants() {
    // Migrated by the owner, as the migrate Job does.
    let owner = spawn_app().await;
    let mut settings = owner.settings.clone();
    settings.tenancy.database.migration_url = None;
    let tenancy = svc::startup::prepare(&settings).await.unwrap();
    let service = test::init_service(svc::startup::app(tenancy, &settings)).await;

    let (status, created) = admin!(service, post "/admin/tenants", json = json!({"identifier": "acme", "name": "Acme"}));
{%- if isolation == "database" %}
    // A database takes the owner's rights: registered now, created by the next `migrate`.
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["status"], "provisioning");
    let (status, refused) = admin!(service, post "/admin/tenants", json = json!({"identifier": "far", "name": "Far", "server": "127.0.0.1:5432"}));
    assert!(status.is_client_error(), "{status} {refused}");
    let report = owner
        .tenancy
        .migrate_all(
            &crate::helpers::operator(),
            4,
            svc::tenancy::lifecycle::Touch::Pending,
            |_| {},
        )
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    let (_, shown) = admin!(service, get "/admin/tenants/acme");
    assert_eq!(shown["status"], "active", "{shown}");
{%- else %}
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "active");
{%- endif %}
{%- if isolation == "hybrid" %}
    let (status, created) = admin!(service, post "/admin/tenants", json = json!({"identifier": "premium", "name": "Premium", "isolation": "schema"}));
    assert_eq!(status, StatusCode::CREATED, "{created}");
{%- endif %}
    let (status, note) =
        call!(service, post "/api/notes", tenant = "acme", json = json!({"title": "kept apart"}));
    assert_eq!(status, StatusCode::CREATED, "{note}");
    let (status, notes) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(notes.as_array().map(Vec::len), Some(1), "{notes}");

    assert_eq!(
        admin!(service, delete "/admin/tenants/acme").0,
        StatusCode::OK
    );
    let (status, body) =
        admin!(service, post "/admin/tenants/acme/destroy", json = json!({"confirm": "acme"}));
{%- if isolation == "database" %}
    // Dropping a database too: refused, naming what does it.
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("tenant destroy"),
        "{body}"
    );
{%- else %}
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(owner.db.schemas().await.iter().all(|s| s != "tenant_acme"));
    assert_eq!(
        admin!(service, get "/admin/tenants/acme").0,
        StatusCode::NOT_FOUND
    );
{%- endif %}
    owner
        .assert_the_owner_is_refused_as_app_role("is a superuser")
        .await;
}
{%- if isolation == "schema" or isolation == "rls" %}

/// The same service with another server listed: a tenant the placement policy puts there
/// is registered (202) and created by the next `migrate`; naming a server{% if isolation == "schema" %}, or destroying
/// a tenant there,{% endif %} is refused with what does it.
#[actix_web::test]
async fn a_service_without_the_owners_url_leaves_tenants_of_other_servers_to_migrate() {
    let db = crate::helpers::TestDatabase::create().await;
    let Some(other) = crate::servers::OtherServer::start(&db).await else {
        return;
    };
    let servers = [("TENANCY_DATABASE_SERVERS", other.address.as_str())];
    let owner = crate::helpers::spawn_app_on(db, &servers).await;
    let mut settings = owner.settings.clone();
    settings.tenancy.database.migration_url = None;
    let tenancy = svc::startup::prepare(&settings).await.unwrap();
    let service = test::init_service(svc::startup::app(tenancy, &settings)).await;

    // The default server first (a tie), through the provisioning functions: served now.
    let (status, created) = admin!(service, post "/admin/tenants", json = json!({"identifier": "acme", "name": "Acme"}));
    assert_eq!(
        (status, &created["server"]),
        (StatusCode::CREATED, &Value::Null),
        "{created}"
    );
    // Then the other server, where the owner {% if isolation == "schema" %}creates schemas{% else %}makes sure of the shared tables{% endif %}.
    let (status, created) = admin!(service, post "/admin/tenants", json = json!({"identifier": "globex", "name": "Globex"}));
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(
        (&created["status"], &created["server"]),
        (&json!("provisioning"), &json!(other.address))
    );
    let (status, refused) = admin!(service, post "/admin/tenants", json = json!({"identifier": "far", "name": "Far", "server": other.address}));
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("TENANCY_MIGRATION_DATABASE_URL"),
        "{refused}"
    );

    let report = owner
        .tenancy
        .migrate_all(
            &crate::helpers::operator(),
            2,
            svc::tenancy::lifecycle::Touch::Pending,
            |_| {},
        )
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let (_, shown) = admin!(service, get "/admin/tenants/globex");
    assert_eq!(shown["status"], "active", "{shown}");
    for name in ["acme", "globex"] {
        let (status, note) =
            call!(service, post "/api/notes", tenant = name, json = json!({"title": name}));
        assert_eq!(status, StatusCode::CREATED, "{name}: {note}");
        let (status, notes) = call!(service, get "/api/notes", tenant = name);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(notes, json!([note]), "{name}");
    }

    assert_eq!(
        admin!(service, delete "/admin/tenants/globex").0,
        StatusCode::OK
    );
    let (status, body) =
        admin!(service, post "/admin/tenants/globex/destroy", json = json!({"confirm": "globex"}));
{%- if isolation == "schema" %}
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("tenant destroy"),
        "{body}"
    );
{%- else %}
    // Its rows are deleted there as the application role: no owner needed.
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let url = format!("{}/{}", other.base_url, other.database);
    let left = crate::helpers::query_url(&url, "SELECT count(*) FROM tenancy_data.notes")
        .await
        .unwrap();
    assert_eq!(left[0][0].as_deref(), Some("0"));
{%- endif %}
}
{%- endif %}

#[actix_web::test]
async fn a_tenants_jobs_are_listed_cancelled_and_retried_over_the_admin_api() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    // No worker runs in this test: the job stays where the API puts it.
    let job = app.enqueue_import(&acme, "later").await;
    let service = service!(app);
    let (status, jobs) = admin!(service, get "/admin/tenants/acme/jobs");
    assert_eq!(status, StatusCode::OK, "{jobs}");
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(
        (jobs[0]["id"].as_i64(), &jobs[0]["state"]),
        (Some(job.id), &json!("queued"))
    );
    assert!(jobs[0].get("lease").is_none(), "{jobs}");
    let (status, none) = admin!(service, get "/admin/tenants/globex/jobs");
    assert_eq!((status, none), (StatusCode::OK, json!([])));

    let cancel = format!("/admin/tenants/acme/jobs/{}/cancel", job.id);
    let retry = format!("/admin/tenants/acme/jobs/{}/retry", job.id);
    let (status, cancelled) = admin!(service, post & cancel);
    assert_eq!(
        (status, &cancelled["state"]),
        (StatusCode::OK, &json!("cancelled"))
    );
    let (status, problem) = admin!(service, post & cancel);
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (status, retried) = admin!(service, post & retry);
    assert_eq!(
        (status, &retried["state"]),
        (StatusCode::OK, &json!("queued"))
    );
    let (_, queued) = admin!(service, get "/admin/tenants/acme/jobs?state=queued");
    assert_eq!(queued.as_array().unwrap().len(), 1);
    let (_, dead) = admin!(service, get "/admin/tenants/acme/jobs?state=dead");
    assert_eq!(dead, json!([]));

    // Another tenant's path does not reach the job; nor does a wrong id or state.
    let other = format!("/admin/tenants/globex/jobs/{}/cancel", job.id);
    for (path, expected) in [
        (other.as_str(), StatusCode::NOT_FOUND),
        (
            "/admin/tenants/acme/jobs/999999999/retry",
            StatusCode::NOT_FOUND,
        ),
        ("/admin/tenants/ghost/jobs/1/retry", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = admin!(service, post path);
        assert_eq!(status, expected, "{path}: {body}");
        assert_eq!(body["status"], expected.as_u16(), "{path}: {body}");
    }
    let (status, _) = admin!(service, get "/admin/tenants/acme/jobs?state=lost");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = admin!(service, get "/admin/tenants/acme/jobs", token = "x".repeat(40));
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, history) = admin!(service, get "/admin/tenants/acme/history");
    let ops: Vec<String> = history
        .as_array()
        .unwrap()
        .iter()
        .take(4)
        .map(|e| {
            format!(
                "{}:{}",
                e["operation"].as_str().unwrap(),
                e["result"].as_str().unwrap()
            )
        })
        .collect();
    let expected = [
        "job_retry:refused",
        "job_retry:ok",
        "job_cancel:refused",
        "job_cancel:ok",
    ];
    assert_eq!(ops, expected);
    assert_eq!(history[0]["actor"], "api:admin");
}
