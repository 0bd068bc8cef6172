//! What a client sees when PostgreSQL refuses a write: constraint violations become 409
//! and 422 problems that name no table, column or constraint. Every answer carries the
//! request's id, and error bodies too.

use crate::helpers::{for_tenant, spawn_app};
use actix_web::body::to_bytes;
use actix_web::http::StatusCode;
use diesel_async::RunQueryDsl;

use svc::db::TenantConnection;
use svc::error::AppError;

/// The problem a handler's `?` makes of the error of `sql`, with or without internals.
async fn problem_of(
    conn: &mut TenantConnection,
    sql: &str,
    internals: bool,
) -> (StatusCode, serde_json::Value) {
    let error = diesel::sql_query(sql).execute(conn).await.unwrap_err();
    let response = AppError::from(error).to_problem(internals, None);
    let status = response.status();
    let body = to_bytes(response.into_body()).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[actix_web::test]
async fn constraint_violations_are_409_or_422_problems_without_internals() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    let first = "INSERT INTO notes (id, title) \
                 VALUES ('00000000-0000-7000-8000-000000000001', 'first')";
    diesel::sql_query(first).execute(&mut conn).await.unwrap();

    // The same key twice.
    let (status, duplicate) = problem_of(&mut conn, first, false).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(duplicate["detail"], "it conflicts with an existing record");
    // A check the handler would have caught first: the constraint's own message.
    let empty = "INSERT INTO notes (title) VALUES ('')";
    let (status, check) = problem_of(&mut conn, empty, false).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(check["detail"], "title must have 1 to 200 characters");
    // A value missing.
    let missing = "INSERT INTO notes (title) VALUES (NULL)";
    let (status, not_null) = problem_of(&mut conn, missing, false).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(not_null["detail"], "a value is not allowed");

    for body in [&duplicate, &check, &not_null] {
        let text = body.to_string();
        for internal in ["notes", "constraint", "pkey", "violates"] {
            assert!(!text.contains(internal), "{internal} leaked: {text}");
        }
    }
    // With TENANCY_ERROR_DETAILS=true a developer sees PostgreSQL's own words.
    let (_, debug) = problem_of(&mut conn, empty, true).await;
    assert!(
        debug["debug"]
            .as_str()
            .unwrap()
            .contains("notes_title_check"),
        "{debug}"
    );
    // Nothing but the first row was written.
    drop(conn);
    assert_eq!(app.db.notes_of(&acme).await, Some(1));
}

#[actix_web::test]
async fn text_with_a_nul_character_is_a_400_that_names_the_field() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);
    let (status, created) = call!(service, post "/api/notes", tenant = "acme", json = serde_json::json!({"title": "ok"}));
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/api/notes/{}", created["id"].as_str().unwrap());
    for (body, field) in [
        (serde_json::json!({"title": "a\u{0}b"}), "title"),
        (serde_json::json!({"title": "ok", "body": "\u{0}"}), "body"),
    ] {
        let (status, problem) =
            call!(service, post "/api/notes", tenant = "acme", json = body.clone());
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with(field),
            "{problem}"
        );
        let (status, _) = call!(service, put & path, tenant = "acme", json = body);
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (_, notes) = call!(service, get "/api/notes", tenant = "acme");
    assert_eq!(notes.as_array().unwrap().len(), 1, "{notes}");
    assert_eq!(notes[0]["title"], "ok");
}

/// The `X-Request-Id` of `response`.
fn id_of<B>(response: &actix_web::dev::ServiceResponse<B>) -> String {
    let value = response
        .headers()
        .get("x-request-id")
        .expect("no X-Request-Id");
    value.to_str().unwrap().to_owned()
}

#[actix_web::test]
async fn every_answer_carries_the_request_id_and_error_bodies_too() {
    use actix_web::test;
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let service = service!(app);

    // A valid id from the client is kept, in the header and in the problem.
    let request = for_tenant(test::TestRequest::get(), "/api/notes", "ghost")
        .insert_header(("X-Request-Id", "trace-4bf92f35.77:1"));
    let response = test::call_service(&service, request.to_request()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(id_of(&response), "trace-4bf92f35.77:1");
    let body: serde_json::Value = test::read_body_json(response).await;
    assert_eq!(body["request_id"], "trace-4bf92f35.77:1", "{body}");

    // An unsafe or repeated one is replaced by a new UUID, the same in header and body.
    let long = "a".repeat(129);
    for sent in [
        vec!["a b"],
        vec!["<x>"],
        vec![long.as_str()],
        vec!["one", "two"],
    ] {
        let mut request = for_tenant(test::TestRequest::get(), "/api/notes", "ghost");
        for value in &sent {
            request = request.append_header(("X-Request-Id", *value));
        }
        let response = test::call_service(&service, request.to_request()).await;
        let id = id_of(&response);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{sent:?} -> {id}");
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["request_id"], id.as_str(), "{body}");
    }

    // Successful answers have one too, a new one per request.
    let ok = |_: ()| for_tenant(test::TestRequest::get(), "/api/notes", "acme").to_request();
    let first = test::call_service(&service, ok(())).await;
    let second = test::call_service(&service, ok(())).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_ne!(id_of(&first), id_of(&second));
}

/// PostgreSQL speaking another language (the application role's `lc_messages` German, on a
/// server of the test's own): a statement timeout and a session the server ended are
/// outages all the same (503, to retry), recognised in the words the service learned from
/// the server at start-up, not bugs (500).
#[actix_web::test]
async fn outages_of_a_server_speaking_another_language_are_unavailable() {
    let Some(cluster) = crate::cluster::Cluster::start(&[]) else {
        return;
    };
    let db = crate::helpers::TestDatabase::create_on(cluster.url()).await;
    let german = format!(
        "ALTER ROLE \"{}\" SET lc_messages = 'de_DE.UTF-8'",
        db.app_role
    );
    if let Err(e) = crate::helpers::query_url(&cluster.url(), &german).await {
        let said = e
            .as_db_error()
            .map_or(e.to_string(), |e| e.message().to_owned());
        let why = format!(
            "{said}: the locale de_DE.UTF-8 must exist before the server starts \
             (sudo locale-gen de_DE.UTF-8, or localedef -i de_DE -f UTF-8 de_DE.UTF-8)"
        );
        // As the tests that need initdb: said and skipped, except under CI.
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let app = crate::helpers::spawn_app_on(db, &[("TENANCY_STATEMENT_TIMEOUT", "1")]).await;
    let acme = app.create_tenant("acme").await;

    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    let timeout = diesel::sql_query("SELECT pg_sleep(5)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    // The server's words, not PostgreSQL's English ones.
    assert!(
        timeout.to_string().contains("Zeitüberschreitung"),
        "{timeout}"
    );
    let error = AppError::from(timeout);
    assert!(matches!(error, AppError::Unavailable { .. }), "{error:?}");
    drop(conn);

    // A bug is still a bug, in any language.
    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    let bug = diesel::sql_query("SELECT * FROM no_such_table")
        .execute(&mut conn)
        .await
        .unwrap_err();
    let error = AppError::from(bug);
    assert!(matches!(error, AppError::Internal { .. }), "{error:?}");
    drop(conn);

    // Last: the pool may hand out the ended session once more before it notices.
    let mut conn = app.tenancy.tenant_connection(&acme).await.unwrap();
    let ended = diesel::sql_query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(ended.to_string().contains("Administrators"), "{ended}");
    let error = AppError::from(ended);
    assert!(matches!(error, AppError::Unavailable { .. }), "{error:?}");
}
