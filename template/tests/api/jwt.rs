//! JWT resolution through the HTTP app, table-driven: every token that must not get in
//! gets the same 401 with `WWW-Authenticate: Bearer`, for each kind of key.

use actix_web::http::StatusCode;

use crate::helpers::{TestApp, now, sign_hs256, spawn_app_with, without_request_id};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "notes-api";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sign(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn private_key(algorithm: Algorithm) -> EncodingKey {
    let pem = |name| std::fs::read(fixture(name)).unwrap();
    match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem("rs256.key.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("es256.key.pem")).unwrap(),
        _ => EncodingKey::from_ed_pem(&pem("eddsa.key.pem")).unwrap(),
    }
}

fn claims(tenant: Value) -> Value {
    json!({"sub": "user-1", "tenant_id": tenant, "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

/// `claims` with `changes` applied; a `null` change removes the claim.
fn with(changes: Value) -> Value {
    let mut claims = claims(json!("acme"));
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Status, `WWW-Authenticate` and body of `GET /api/notes` with `authorization`.
async fn get_notes(app: &TestApp, authorization: &str) -> (u16, Option<String>, Value) {
    let service = service!(app);
    let request = actix_web::test::TestRequest::get()
        .uri("/api/notes")
        .insert_header(("Authorization", authorization.to_owned()))
        .to_request();
    let response = actix_web::test::call_service(&service, request).await;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = actix_web::test::read_body(response).await;
    (
        status,
        challenge,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Every case gets its status; every 401 is the same, with the Bearer challenge and no
/// hint of which check failed.
async fn check(app: &TestApp, cases: Vec<(&str, String, u16)>) {
    let mut refusals = Vec::new();
    for (name, authorization, expected) in cases {
        let (status, challenge, body) = get_notes(app, &authorization).await;
        assert_eq!(status, expected, "{name}: {body}");
        if status == 401 {
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{name}");
            assert!(
                body.get("detail").is_none() && body.get("debug").is_none(),
                "{name}: {body}"
            );
            refusals.push((name, body));
        }
    }
    for (name, body) in &refusals {
        assert_eq!(
            without_request_id(body.clone()),
            without_request_id(refusals[0].1.clone()),
            "{name} and {} differ",
            refusals[0].0
        );
    }
}

async fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let app = spawn_app_with(extra).await;
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    app
}

#[actix_web::test]
async fn hs256_tokens_are_checked_claim_by_claim() {
    let app = app_with(&[
        ("TENANCY_JWT_ISSUER", ISSUER),
        ("TENANCY_JWT_AUDIENCE", AUDIENCE),
        ("TENANCY_JWT_LEEWAY", "5"),
    ])
    .await;
    let sleepy = app.create_tenant("sleepy").await;
    app.tenancy
        .suspend_tenant(&crate::helpers::operator(), &sleepy.identifier)
        .await
        .unwrap();

    let bearer = |token: String| format!("Bearer {token}");
    let valid = sign_hs256(claims(json!("acme")));
    let globex = sign_hs256(claims(json!("globex")));
    let parts: Vec<&str> = valid.split('.').collect();
    let globex_payload = globex.split('.').nth(1).unwrap();
    let rsa_public_key = std::fs::read(fixture("rs256.pub.pem")).unwrap();
    let cases = vec![
        ("valid", bearer(valid.clone()), 200),
        ("lowercase scheme", format!("bearer {valid}"), 200),
        (
            "alg none",
            bearer(format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(json!("acme")))
            )),
            401,
        ),
        (
            "RS256 public key as HS256 secret",
            bearer(sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&rsa_public_key),
                None,
                &claims(json!("acme")),
            )),
            401,
        ),
        (
            "another secret",
            bearer(sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-0123456789abcdef0123456789"),
                None,
                &claims(json!("acme")),
            )),
            401,
        ),
        (
            "HS512 not pinned",
            bearer(sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(crate::helpers::JWT_SECRET.as_bytes()),
                None,
                &claims(json!("acme")),
            )),
            401,
        ),
        (
            "expired",
            bearer(sign_hs256(with(json!({"exp": now() - 60})))),
            401,
        ),
        (
            "within leeway",
            bearer(sign_hs256(with(json!({"exp": now() - 2})))),
            200,
        ),
        (
            "no exp",
            bearer(sign_hs256(with(json!({"exp": null})))),
            401,
        ),
        (
            "not yet valid",
            bearer(sign_hs256(with(json!({"nbf": now() + 600})))),
            401,
        ),
        (
            "valid nbf",
            bearer(sign_hs256(with(json!({"nbf": now() - 60})))),
            200,
        ),
        (
            "wrong issuer",
            bearer(sign_hs256(with(json!({"iss": "https://evil.test"})))),
            401,
        ),
        (
            "no issuer",
            bearer(sign_hs256(with(json!({"iss": null})))),
            401,
        ),
        (
            "wrong audience",
            bearer(sign_hs256(with(json!({"aud": "other-api"})))),
            401,
        ),
        (
            "no audience",
            bearer(sign_hs256(with(json!({"aud": null})))),
            401,
        ),
        (
            "tampered payload",
            bearer(format!("{}.{}.{}", parts[0], globex_payload, parts[2])),
            401,
        ),
        (
            "tampered signature",
            bearer(format!("{}.{}.{}x", parts[0], parts[1], parts[2])),
            401,
        ),
        (
            "tenant claim missing",
            bearer(sign_hs256(with(json!({"tenant_id": null})))),
            401,
        ),
        (
            "tenant claim a number",
            bearer(sign_hs256(with(json!({"tenant_id": 42})))),
            401,
        ),
        (
            "tenant claim a list",
            bearer(sign_hs256(with(json!({"tenant_id": ["acme"]})))),
            401,
        ),
        (
            "10 KB token",
            bearer(sign_hs256(with(json!({"padding": "x".repeat(10 * 1024)})))),
            401,
        ),
        ("not a JWT", bearer("not.a.jwt".into()), 401),
        ("empty bearer", "Bearer ".into(), 401),
        ("basic scheme", "Basic YWNtZTpzZWNyZXQ=".into(), 401),
        (
            "malformed tenant",
            bearer(sign_hs256(with(json!({"tenant_id": "Acme Corp"})))),
            404,
        ),
        (
            "unknown tenant",
            bearer(sign_hs256(with(json!({"tenant_id": "nosuch"})))),
            404,
        ),
        (
            "suspended tenant",
            bearer(sign_hs256(with(json!({"tenant_id": "sleepy"})))),
            403,
        ),
    ];
    check(&app, cases).await;
}

#[actix_web::test]
async fn the_claims_reach_handlers_and_a_token_reaches_only_its_tenant() {
    let app = app_with(&[]).await;
    let service = service!(app);
    let send = |request: actix_web::test::TestRequest, tenant: &str| {
        let request = request
            .insert_header((
                "Authorization",
                format!("Bearer {}", crate::helpers::token_for(tenant)),
            ))
            .to_request();
        let service = &service;
        async move {
            let response = actix_web::test::call_service(service, request).await;
            let status = response.status();
            let body: Value = serde_json::from_slice(&actix_web::test::read_body(response).await)
                .unwrap_or(Value::Null);
            (status, body)
        }
    };
    let (status, me) = send(actix_web::test::TestRequest::get().uri("/api/me"), "acme").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"tenant": "acme", "subject": "user-1"}));

    let post = actix_web::test::TestRequest::post()
        .uri("/api/notes")
        .set_json(json!({"title": "g"}));
    let (status, _) = send(post, "globex").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, notes) = send(
        actix_web::test::TestRequest::get().uri("/api/notes"),
        "acme",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(notes, json!([]));
    let (_, notes) = send(
        actix_web::test::TestRequest::get().uri("/api/notes"),
        "globex",
    )
    .await;
    assert_eq!(notes.as_array().unwrap().len(), 1, "{notes}");
}

#[actix_web::test]
async fn only_error_details_tell_which_check_failed() {
    let app = app_with(&[("TENANCY_ERROR_DETAILS", "true")]).await;
    let expired = sign_hs256(with(json!({"exp": now() - 600})));
    let (status, challenge, body) = get_notes(&app, &format!("Bearer {expired}")).await;
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    let debug = body["debug"].as_str().unwrap_or_default().to_lowercase();
    assert!(debug.contains("expired"), "{body}");
}

#[actix_web::test]
async fn rs256_es256_and_eddsa_public_keys_verify_their_own_algorithm_only() {
    for (algorithm, name, file) in [
        (Algorithm::RS256, "RS256", "rs256.pub.pem"),
        (Algorithm::ES256, "ES256", "es256.pub.pem"),
        (Algorithm::EdDSA, "EdDSA", "eddsa.pub.pem"),
    ] {
        let key_file = fixture(file);
        let app = app_with(&[
            ("TENANCY_JWT_SECRET", ""),
            ("TENANCY_JWT_PUBLIC_KEY_FILE", &key_file),
            ("TENANCY_JWT_ALGORITHMS", name),
        ])
        .await;
        let public_key = std::fs::read(&key_file).unwrap();
        let good = sign(
            algorithm,
            &private_key(algorithm),
            None,
            &claims(json!("acme")),
        );
        let other = if algorithm == Algorithm::RS256 {
            Algorithm::ES256
        } else {
            Algorithm::RS256
        };
        let cases = vec![
            ("own algorithm", format!("Bearer {good}"), 200),
            (
                "public key as HS256 secret",
                format!(
                    "Bearer {}",
                    sign(
                        Algorithm::HS256,
                        &EncodingKey::from_secret(&public_key),
                        None,
                        &claims(json!("acme"))
                    )
                ),
                401,
            ),
            (
                "another algorithm",
                format!(
                    "Bearer {}",
                    sign(other, &private_key(other), None, &claims(json!("acme")))
                ),
                401,
            ),
            (
                "expired",
                format!(
                    "Bearer {}",
                    sign(
                        algorithm,
                        &private_key(algorithm),
                        None,
                        &with(json!({"exp": now() - 600}))
                    )
                ),
                401,
            ),
        ];
        check(&app, cases).await;
    }
}

#[actix_web::test]
async fn a_jwks_file_picks_the_key_by_kid() {
    let app = app_with(&[
        ("TENANCY_JWT_SECRET", ""),
        ("TENANCY_JWT_JWKS_FILE", &fixture("jwks.json")),
        ("TENANCY_JWT_ALGORITHMS", "RS256"),
    ])
    .await;
    let key = private_key(Algorithm::RS256);
    let token = |kid| {
        format!(
            "Bearer {}",
            sign(Algorithm::RS256, &key, kid, &claims(json!("acme")))
        )
    };
    check(
        &app,
        vec![
            ("known kid", token(Some("test-rs256")), 200),
            ("no kid, one key", token(None), 200),
            ("unknown kid", token(Some("other")), 401),
        ],
    )
    .await;
}

#[test]
fn start_up_refuses_settings_that_weaken_verification() {
    let base = |extra: &[(&str, &str)]| {
        let mut env: std::collections::HashMap<String, String> = [(
            "TENANCY_DATABASE_URL",
            "postgres://app@localhost/app".to_string(),
        )]
        .into_iter()
        .chain(crate::helpers::base_env())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            if v.is_empty() {
                env.remove(*k);
            } else {
                env.insert(k.to_string(), v.to_string());
            }
        }
        svc::config::Settings::from_env_map(env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let pem = fixture("rs256.pub.pem");
    for (extra, variable) in [
        (
            vec![("TENANCY_JWT_SECRET", "too-short")],
            "TENANCY_JWT_SECRET",
        ),
        (vec![("TENANCY_JWT_SECRET", "")], "TENANCY_JWT_ALGORITHMS"),
        (
            vec![("TENANCY_JWT_ALGORITHMS", "none")],
            "TENANCY_JWT_ALGORITHMS",
        ),
        (
            vec![("TENANCY_JWT_ALGORITHMS", "HS256,RS256")],
            "TENANCY_JWT_ALGORITHMS",
        ),
        (
            vec![
                ("TENANCY_JWT_SECRET", ""),
                ("TENANCY_JWT_PUBLIC_KEY_FILE", &pem),
                ("TENANCY_JWT_ALGORITHMS", "HS256"),
            ],
            "TENANCY_JWT_ALGORITHMS",
        ),
        (
            vec![
                ("TENANCY_JWT_PUBLIC_KEY_FILE", &pem),
                ("TENANCY_JWT_ALGORITHMS", "RS256"),
            ],
            "TENANCY_JWT_SECRET",
        ),
        (
            vec![
                ("TENANCY_JWT_SECRET", ""),
                ("TENANCY_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
                ("TENANCY_JWT_ALGORITHMS", "RS256"),
            ],
            "TENANCY_JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![
                ("TENANCY_JWT_SECRET", ""),
                ("TENANCY_JWT_PUBLIC_KEY_FILE", &pem),
                ("TENANCY_JWT_ALGORITHMS", "ES256"),
            ],
            "TENANCY_JWT_PUBLIC_KEY_FILE",
        ),
    ] {
        let error = base(&extra);
        assert!(
            error.starts_with(&format!("{variable}:")),
            "{extra:?}: {error:?}"
        );
    }
}

#[actix_web::test]
async fn two_authorization_headers_are_refused_whichever_comes_first() {
    let app = app_with(&[]).await;
    let service = service!(app);
    let bearer = |tenant: &str| format!("Bearer {}", crate::helpers::token_for(tenant));
    for (first, second) in [("acme", "globex"), ("globex", "acme"), ("acme", "acme")] {
        let request = actix_web::test::TestRequest::get()
            .uri("/api/notes")
            .append_header(("Authorization", bearer(first)))
            .append_header(("Authorization", bearer(second)))
            .to_request();
        let response = actix_web::test::call_service(&service, request).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{first}, {second}"
        );
    }
}
