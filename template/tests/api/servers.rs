//! A second PostgreSQL server for placement and moves (`TENANCY_TEST_OTHER_SERVER`, else a
//! throwaway one of the test's own), and what start-up says of the servers listed.

use crate::cluster::Cluster;
use crate::helpers::{query_url, server_url};
use crate::pgbouncer::PgBouncer;

/// The second PostgreSQL server of the placement and move tests: `TENANCY_TEST_OTHER_SERVER`
/// (host:port; ci/ starts one for the whole run), else a throwaway server of the test's
/// own (see [`Cluster`]), reached as the test server's user. The test's app role is
/// created there (roles belong to a server){% if isolation == "schema" or isolation == "rls" %}, and the test's database (tenant {% if isolation == "schema" %}schemas{% else %}rows{% endif %} go in the
/// database of the same name){% endif %}; everything is dropped at the end.
pub(crate) struct OtherServer {
    pub(crate) address: String,
    /// `postgres://user@host:port`, the test server's user on this server.
    pub(crate) base_url: String,
    /// Its maintenance database, as the test server's user.
    pub(crate) admin_url: String,
    role: String,
    prefix: String,
{%- if isolation == "schema" or isolation == "rls" %}
    /// The test's database there.
    pub(crate) database: String,
{%- endif %}
    /// The server started for this test alone, removed with it.
    own: Option<Cluster>,
}

impl OtherServer {
    /// `None` (with a message) where no second server is set and PostgreSQL's server
    /// programs are not installed to start one, which fails the test under CI.
    pub(crate) async fn start(db: &crate::helpers::TestDatabase) -> Option<Self> {
        let (address, own) = match std::env::var("TENANCY_TEST_OTHER_SERVER") {
            Ok(address) => (address, None),
            Err(_) => {
                let cluster = Cluster::start(&[])?;
                (format!("127.0.0.1:{}", cluster.port()), Some(cluster))
            }
        };
        let url = server_url();
        let user = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(user, _)| user);
        let base_url = format!(
            "postgres://{}{address}",
            user.map_or(String::new(), |user| format!("{user}@"))
        );
        let admin_url = format!("{base_url}/postgres");
        // A server of the test's own has `postgres` alone: the test server's user too.
        let name = user.map(|user| user.split(':').next().unwrap_or(user));
        if let (Some(cluster), Some(name)) = (&own, name.filter(|n| *n != "postgres")) {
            let create = format!("CREATE ROLE \"{name}\" LOGIN SUPERUSER");
            query_url(&cluster.url(), &create).await.unwrap();
        }
        query_url(
            &admin_url,
            &format!(
                "CREATE ROLE \"{}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{}'",
                db.app_role, db.app_password
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot prepare the second server {address}: {e}"));
{%- if isolation == "schema" or isolation == "rls" %}
        let create = format!("CREATE DATABASE \"{}\"", db.name);
        query_url(&admin_url, &create).await.unwrap();
{%- endif %}
        Some(Self {
            address,
            base_url,
            admin_url,
            role: db.app_role.clone(),
            prefix: db.tenant_database_prefix.clone(),
{%- if isolation == "schema" or isolation == "rls" %}
            database: db.name.clone(),
{%- endif %}
            own,
        })
    }
{%- if tenant_databases %}

    pub(crate) async fn has_database(&self, name: &str) -> bool {
        let sql = format!("SELECT 1 FROM pg_database WHERE datname = '{name}'");
        !query_url(&self.admin_url, &sql).await.unwrap().is_empty()
    }
{%- endif %}
}

impl Drop for OtherServer {
    /// A server of the test's own goes whole; on a shared one, what the test made there.
    fn drop(&mut self) {
        if self.own.is_none() {
            crate::helpers::clean_up(
                self.admin_url.clone(),
                self.prefix.clone(),
{%- if isolation == "schema" or isolation == "rls" %}
                Some(self.database.clone()),
{%- else %}
                None,
{%- endif %}
                self.role.clone(),
            );
        }
    }
}

/// Creates tenant `identifier` (its name too) on `server` (`tenant create --server`).
pub(crate) async fn create_on(
    app: &crate::helpers::TestApp,
    identifier: &str,
    server: &str,
) -> Result<svc::domain::Tenant, svc::tenancy::lifecycle::LifecycleError> {
    let new = svc::tenancy::lifecycle::NewTenant {
        server: Some(svc::domain::ServerAddress::parse(server).unwrap()),
        ..svc::tenancy::lifecycle::NewTenant::new(
            svc::domain::TenantIdentifier::parse(identifier).unwrap(),
            identifier,
        )
    };
    app.tenancy
        .create_tenant(&crate::helpers::operator(), new)
        .await
}

/// An app whose `TENANCY_DATABASE_SERVERS` lists the second server and two unreachable
/// ones (to ask for a server other than the recorded one); `None` where there is no second
/// server (see [`OtherServer::start`]).
pub(crate) async fn spawn_with_other_server() -> Option<(crate::helpers::TestApp, OtherServer)> {
    let db = crate::helpers::TestDatabase::create().await;
    let other = OtherServer::start(&db).await?;
    let servers = format!("{},elsewhere.invalid:5432,elsewhere.invalid", other.address);
    // Unreachable servers listed: every tenant that names none stays on the default one.
    let app = crate::helpers::spawn_app_on(
        db,
        &[
            ("TENANCY_DATABASE_SERVERS", &servers),
            ("TENANCY_DATABASE_PLACEMENT", "default"),
{%- if isolation == "hybrid" %}
            // A tenant created without a tier gets a database of its own.
            ("TENANCY_DEFAULT_ISOLATION", "database"),
{%- endif %}
        ],
    )
    .await;
    Some((app, other))
}

/// As [`spawn_with_other_server`] (the second server alone listed), in transaction mode
/// behind a PgBouncer in front of each server: the application role reaches the default
/// server through the first (`TENANCY_DATABASE_URL`), the second through the other
/// (`TENANCY_DATABASE_SERVER_POOLERS`). New tenants go where `placement`
/// (`TENANCY_DATABASE_PLACEMENT`) says. `None` where PgBouncer is not installed.
pub(crate) async fn spawn_behind_poolers(
    placement: &str,
) -> Option<(crate::helpers::TestApp, OtherServer, [PgBouncer; 2])> {
    let connections = crate::pooler::SERVER_CONNECTIONS;
    let near = PgBouncer::start(&server_url(), "transaction", connections)?;
    let db = crate::helpers::TestDatabase::create().await;
    let other = OtherServer::start(&db).await?;
    let far = PgBouncer::start(&other.base_url, "transaction", connections)?;
    let poolers = format!("{}={}", other.address, far.address());
    let app = crate::pooler::spawn_behind(
        &near,
        db,
        &[
            ("TENANCY_DATABASE_SERVERS", &other.address),
            ("TENANCY_DATABASE_SERVER_POOLERS", &poolers),
            ("TENANCY_DATABASE_PLACEMENT", placement),
{%- if isolation == "hybrid" %}
            ("TENANCY_DEFAULT_ISOLATION", "database"),
{%- endif %}
        ],
    )
    .await;
    Some((app, other, [near, far]))
}

#[actix_web::test]
async fn a_service_refuses_to_start_without_a_server_its_tenants_are_on() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    create_on(&app, "far", &other.address).await.unwrap();
    let start_with = |servers: &str| {
        let (settings, _) =
            crate::helpers::settings_on(&app.db, &[("TENANCY_DATABASE_SERVERS", servers)]);
        async move { svc::startup::prepare(&settings).await.map(drop) }
    };
    // The second server taken off the list: its tenant would not be served.
    let refused = start_with("elsewhere.invalid")
        .await
        .unwrap_err()
        .to_string();
    let named = format!("{} (1 tenant)", other.address);
    assert!(
        refused.contains(&named) && refused.contains("TENANCY_DATABASE_SERVERS"),
        "{refused}"
    );
    // Listed again, in another order, it starts.
    start_with(&format!("elsewhere.invalid,{}", other.address))
        .await
        .unwrap();
}

#[actix_web::test]
async fn a_tenant_on_a_server_that_does_not_answer_is_reported_and_the_others_migrate() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    app.create_tenant("near").await;
    create_on(&app, "far", &other.address).await.unwrap();
    // A tenant recorded on a listed server that does not answer.
    let unanswered = svc::domain::ServerAddress::parse("elsewhere.invalid").unwrap();
    let mut conn = app.tenancy.control.get().await.unwrap();
    let lost = svc::tenancy::registry::insert_or_get(
        &mut conn,
        &svc::domain::TenantIdentifier::parse("lost").unwrap(),
        "Lost",
{%- if isolation == "schema" %}
        svc::domain::Isolation::Schema,
{%- elsif isolation == "rls" %}
        svc::domain::Isolation::Rls,
{%- else %}
        svc::domain::Isolation::Database,
{%- endif %}
        &serde_json::json!({}),
        Some(&unanswered),
    )
    .await
    .unwrap();
    drop(conn);
{%- if tenant_databases %}
    app.db
        .query(&format!(
            "INSERT INTO tenancy.tenant_databases (tenant_id, database_name, server) \
             VALUES ('{}', 'lost', 'elsewhere.invalid')",
            lost.id
        ))
        .await;
{%- endif %}

    // The plan reads the others and names the one it could not read.
    let plan = app.tenancy.plan_migrations().await.unwrap();
    assert_eq!(plan.tenants, 3);
    assert!(plan.pending.is_empty(), "{plan:?}");
    let unread: Vec<String> = (plan.unread.iter())
        .map(|(tenant, why)| format!("{tenant}: {why}"))
        .collect();
    assert!(
        matches!(unread.as_slice(), [one] if one.starts_with("lost: elsewhere.invalid")),
        "{unread:?}"
    );
    assert!(!plan.is_empty());

    // `migrate` reports it, untried, and migrates the others.
    let mut seen = Vec::new();
    let report = app
        .tenancy
        .migrate_all(
            &crate::helpers::operator(),
            2,
            svc::tenancy::lifecycle::Touch::Pending,
            |p| seen.push((p.tenant.to_string(), p.result.is_ok())),
        )
        .await
        .unwrap();
    assert_eq!(seen, [("lost".to_owned(), false)]);
    let failed: Vec<&str> = report.failures.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(failed, ["lost"], "{report:?}");
    let report = app
        .tenancy
        .migrate_all(
            &crate::helpers::operator(),
            2,
            svc::tenancy::lifecycle::Touch::Every,
            |_| {},
        )
        .await
        .unwrap();
    let failed: Vec<&str> = report.failures.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        (report.tenants_pending, failed),
        (3, vec!["lost"]),
        "{report:?}"
    );
    // It was left as it was: never read-only.
    let maintenance = app
        .db
        .query(&format!(
            "SELECT maintenance FROM tenancy.tenants WHERE id = '{}'",
            lost.id
        ))
        .await;
    assert_eq!(maintenance[0][0].as_deref(), Some("off"));
}

#[actix_web::test]
async fn connections_to_another_server_give_up_as_those_to_the_default_one_do() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let (servers, ctx) = (app.tenancy.servers(), app.tenancy.context());
    let server = svc::domain::ServerAddress::parse(&other.address).unwrap();
    // The application role's, as long as it waits for a connection at most
    // (TENANCY_DATABASE_POOL_TIMEOUT); the owner's, 10 s.
    let app_config = servers.app_config(ctx, Some(&server)).unwrap();
    assert_eq!(
        app_config.get_connect_timeout(),
        Some(&app.settings.tenancy.database.pool_timeout)
    );
    for owner in [
        servers.owner_config(ctx, Some(&server)).unwrap(),
        servers.owner_config(ctx, None).unwrap(),
    ] {
        assert_eq!(
            owner.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(10))
        );
    }
    // A URL that says otherwise is followed.
    let joint = if app.db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{joint}connect_timeout=3", app.db.url);
    let (settings, _) = crate::helpers::settings_on(
        &app.db,
        &[
            ("TENANCY_DATABASE_SERVERS", &other.address),
            ("TENANCY_MIGRATION_DATABASE_URL", &url),
        ],
    );
    let tenancy = svc::tenancy::Tenancy::new(settings.tenancy).unwrap();
    let owner = (tenancy
        .servers()
        .owner_config(tenancy.context(), Some(&server)))
    .unwrap();
    assert_eq!(
        owner.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(3))
    );
}

#[actix_web::test]
async fn a_service_refuses_an_application_role_that_is_a_superuser_on_another_server() {
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    // The application role is a role of each server: a superuser there only.
    let role = &app.db.app_role;
    crate::helpers::server_exec_on(
        &other.admin_url,
        &format!("ALTER ROLE \"{role}\" SUPERUSER"),
    )
    .await;
    let refused = svc::startup::prepare(&app.settings).await.map(drop);
    crate::helpers::server_exec_on(
        &other.admin_url,
        &format!("ALTER ROLE \"{role}\" NOSUPERUSER"),
    )
    .await;
    let refused = refused.unwrap_err().to_string();
    let there = format!("on {}:", other.address);
    assert!(
        refused.contains(&there) && refused.contains("superuser"),
        "{refused}"
    );
    // Back to what it was, it starts; the unreachable servers listed beside it are left
    // unchecked.
    svc::startup::prepare(&app.settings).await.unwrap();
}

#[actix_web::test]
async fn an_application_role_start_up_could_not_check_is_checked_before_its_first_connection_there()
{
    let Some((app, other)) = spawn_with_other_server().await else {
        return;
    };
    let acme = create_on(&app, "acme", &other.address).await.unwrap();
    let role = &app.db.app_role;
    let alter = |change: &'static str| {
        let sql = format!("ALTER ROLE \"{role}\" {change}");
        let url = other.admin_url.clone();
        async move { crate::helpers::server_exec_on(&url, &sql).await }
    };
    // The server does not let the role in while the service starts: it starts, the role
    // unchecked there. Then the role is let in, a superuser there.
    alter("NOLOGIN").await;
    let started = svc::startup::prepare(&app.settings).await;
    alter("LOGIN SUPERUSER").await;
    let tenancy = started.unwrap();
    let refused = tenancy.tenant_connection(&acme).await.map(drop);
    let again = tenancy.tenant_connection(&acme).await.map(drop);
    alter("NOSUPERUSER").await;
    for refused in [refused, again] {
        match refused {
            Err(svc::db::pool::PoolError::Isolation(why)) => {
                let there = format!("on {}:", other.address);
                assert!(why.contains(&there) && why.contains("superuser"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Back to what it should be, its tenants there are served.
    tenancy.tenant_connection(&acme).await.unwrap();
}
