//! The generated binary's commands, run as a user would run them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::TestDatabase;

fn run(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_{{project-name}}"))
        .args(args)
        .env_clear()
        .env("TENANCY_DATABASE_URL", db_url)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[actix_web::test]
async fn migrate_and_manage_tenants_from_the_command_line() {
    let db = TestDatabase::create().await;
    let out = run(&db.url, &["migrate"]);
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

    let out = run(
        &db.url,
        &["tenant", "create", "acme", "--name", "Acme Corp"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&db.url, &["tenant", "list"]);
    assert!(
        stdout(&out).contains("acme") && stdout(&out).contains("active"),
        "{}",
        stdout(&out)
    );

    let out = run(&db.url, &["migrate"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("[1/1] acme: up to date"));

    let out = run(&db.url, &["tenant", "create", "Bad\"Name", "--name", "x"]);
    assert!(!out.status.success());
    assert_eq!(db.schemas().await, vec!["public", "tenancy", "tenant_acme"]);

    assert!(run(&db.url, &["tenant", "delete", "acme"]).status.success());
    let refused = run(
        &db.url,
        &["tenant", "destroy", "acme", "--confirm", "other"],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("confirmation"));
    assert!(
        run(&db.url, &["tenant", "destroy", "acme", "--confirm", "acme"])
            .status
            .success()
    );
    assert_eq!(db.schemas().await, vec!["public", "tenancy"]);
}

#[test]
fn bad_configuration_names_the_variable_and_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_{{project-name}}"))
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
