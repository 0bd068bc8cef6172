//! The command line: `serve` (the default), `worker`, `migrate`, `tenant ...` for the
//! tenant lifecycle and `jobs ...` for a tenant's background jobs. Commands print results
//! on stdout and progress on stderr.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;
{%- if isolation == "hybrid" %}
use crate::domain::Isolation;
{%- endif %}
use crate::domain::{Maintenance, TenantIdentifier, TenantLimits, TenantStatus};
use crate::jobs::worker::Workers;
use crate::jobs::{JobRecord, JobState, Queue};
use crate::startup::{Application, job_kinds, prepare, shutdown_signal};
use crate::tenancy::Tenancy;
use crate::tenancy::audit::Actor;
use crate::tenancy::isolation::ServerAddress;
use crate::tenancy::isolation::server_name;
use crate::tenancy::lifecycle::{NewTenant, Touch};
use crate::tenancy::moves::Moved;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Multi-tenant service; configured by TENANCY_* environment variables"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (default), and TENANCY_JOBS_WORKERS job workers.
    Serve,
    /// Run job workers only (TENANCY_JOBS_WORKERS of them), until SIGTERM or Ctrl-C.
    Worker,
    /// Migrate the control plane and every tenant that is not deleted.
    Migrate {
        /// Tenants migrated at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// First create the role of TENANCY_DATABASE_URL (as the migration role) if missing;
        /// when it is created, every tenant is touched, to grant it access.
        #[arg(long)]
        create_app_role: bool,
        /// List what would be applied, per tenant and for the control plane, and change
        /// nothing. Exit code 0: nothing pending; 2: something pending; 1: an error.
        #[arg(long, conflicts_with_all = ["create_app_role", "every_tenant"])]
        plan: bool,
        /// Touch every tenant, pending or not (re-applies the application role's grants).
        #[arg(long)]
        every_tenant: bool,
    },
    /// Print the OpenAPI 3.1 document of the HTTP API (what GET /openapi.json serves);
    /// needs no configuration.
    Openapi,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// A tenant's background jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List a tenant's jobs, newest first.
    List {
        identifier: String,
        /// Only jobs in this state: queued, running, done, dead or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Jobs shown at most.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Queue a dead or cancelled job again, due now, with all its attempts.
    Retry { identifier: String, id: i64 },
    /// Cancel a queued or dead job.
    Cancel { identifier: String, id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create and provision a tenant (completes an interrupted provisioning).
    Create(CreateArgs),
    /// List tenants.
    List,
    /// Stop serving a tenant (its requests get 403).
    Suspend { identifier: String },
    /// Serve a suspended tenant again.
    Activate { identifier: String },
    /// Soft-delete a tenant: not served, data kept.
    Delete { identifier: String },
    /// Make a tenant read-only (its writes get 503) while it is changed, or take writes
    /// again.
    Maintenance {
        identifier: String,
        /// read_only or off.
        mode: String,
    },
{%- if isolation == "hybrid" %}
    /// Move a tenant's database to another server, or its data one tier up or down
    /// (read-only meanwhile), or resume its interrupted move: run the same command
    /// again.
    Move {
        identifier: String,
        /// A server of TENANCY_DATABASE_SERVERS (host or host:port), or `default`: the
        /// server of TENANCY_DATABASE_URL_TEMPLATE.
        #[arg(
            long,
            value_name = "SERVER|default",
            required_unless_present = "isolation"
        )]
        to: Option<String>,
        /// The tier to move the tenant's data to, one up or down: schema (from rls or
        /// database), rls (from schema), or database (from schema; on the server of
        /// --to, else where TENANCY_DATABASE_PLACEMENT says).
        #[arg(long)]
        isolation: Option<String>,
    },
{%- else %}
    /// Move a tenant's {% if isolation == "schema" %}schema{% elsif isolation == "rls" %}rows{% else %}database{% endif %} to another server (read-only meanwhile), or resume its
    /// interrupted move: run the same command again.
    Move {
        identifier: String,
        /// A server of TENANCY_DATABASE_SERVERS (host or host:port), or `default`: the
        /// server of {% if isolation == "schema" %}TENANCY_DATABASE_URL{% else %}TENANCY_DATABASE_URL_TEMPLATE{% endif %}.
        #[arg(long, value_name = "SERVER|default")]
        to: String,
    },
{%- endif %}
    /// Show a tenant's own limits, or set them (`default`: the service's setting).
    Limits(LimitsArgs),
    /// Drop a deleted tenant's data for good; its identifier is then quarantined
    /// (TENANCY_IDENTIFIER_QUARANTINE_DAYS).
    Destroy {
        identifier: String,
        /// The identifier again, to confirm.
        #[arg(long, required_unless_present = "dry_run")]
        confirm: Option<String>,
        /// List what would be dropped (storage, tables, rows) and drop nothing.
        #[arg(long, conflicts_with = "confirm")]
        dry_run: bool,
    },
    /// Let a new tenant take a destroyed tenant's identifier before its quarantine ends.
    Release { identifier: String },
    /// Show the audit trail of a tenant identifier (every tenant that had it), newest first.
    History {
        identifier: String,
        /// Entries shown at most.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
}

/// `tenant create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    identifier: String,
    /// Display name.
    #[arg(long)]
    name: String,
    /// JSON object stored with the tenant.
    #[arg(long, default_value = "{}")]
    metadata: String,
{%- if isolation == "hybrid" %}
    /// schema, rls or database (default: TENANCY_DEFAULT_ISOLATION).
    #[arg(long)]
    isolation: Option<String>,
{%- endif %}
    /// PostgreSQL server (host or host:port) to place the tenant on, one of
    /// TENANCY_DATABASE_SERVERS; credentials come from the configured URLs (default:
    /// as TENANCY_DATABASE_PLACEMENT says).
    #[arg(long)]
    server: Option<String>,
}

impl CreateArgs {
    /// The tenant to create, or what is wrong with an argument.
    fn new_tenant(self) -> Result<NewTenant, String> {
        Ok(NewTenant {
{%- if isolation == "hybrid" %}
            isolation: self
                .isolation
                .map(|i| i.parse::<Isolation>())
                .transpose()
                .map_err(|e| format!("--isolation: {e}"))?,
{%- endif %}
            metadata: serde_json::from_str(&self.metadata)
                .map_err(|e| format!("--metadata is not JSON: {e}"))?,
            server: self
                .server
                .as_deref()
                .map(ServerAddress::parse)
                .transpose()
                .map_err(|e| format!("--server: {e}"))?,
            ..NewTenant::new(parse(&self.identifier)?, self.name)
        })
    }
}

/// `tenant limits`: each limit `None` when not given, `default` for the service's.
#[derive(Debug, clap::Args)]
pub struct LimitsArgs {
    identifier: String,
    /// The most database connections it holds at once (TENANCY_TENANT_MAX_CONNECTIONS).
    #[arg(long, value_name = "N|default")]
    max_connections: Option<String>,
    /// Seconds after which PostgreSQL cancels one of its statements
    /// (TENANCY_STATEMENT_TIMEOUT).
    #[arg(long, value_name = "SECONDS|default")]
    statement_timeout: Option<String>,
    /// Requests a second it may send (TENANCY_RATE_LIMIT).
    #[arg(long, value_name = "N|default")]
    rate_limit: Option<String>,
    /// Requests it may send at once (TENANCY_RATE_LIMIT_BURST).
    #[arg(long, value_name = "N|default")]
    rate_limit_burst: Option<String>,
}

impl LimitsArgs {
    /// The tenant's limits with those given replacing `kept`; `None` when none was given.
    fn over(&self, kept: TenantLimits) -> Result<Option<TenantLimits>, String> {
        let given = (
            limit("--max-connections", self.max_connections.as_deref())?,
            limit("--statement-timeout", self.statement_timeout.as_deref())?,
            limit("--rate-limit", self.rate_limit.as_deref())?,
            limit("--rate-limit-burst", self.rate_limit_burst.as_deref())?,
        );
        Ok((given != (None, None, None, None)).then(|| TenantLimits {
            max_connections: given.0.unwrap_or(kept.max_connections),
            statement_timeout: given.1.unwrap_or(kept.statement_timeout),
            rate_limit: given.2.unwrap_or(kept.rate_limit),
            rate_limit_burst: given.3.unwrap_or(kept.rate_limit_burst),
        }))
    }
}

/// `serve` logs its own events at info and its dependencies' at warn; one-off commands
/// only warnings (on stderr). `RUST_LOG` replaces either.{% if opentelemetry %} Keep what it returns until the
/// process ends (traces still buffered are sent when it is dropped).{% endif %}
pub fn init_logging(cli: &Cli){% if opentelemetry %} -> Option<crate::otlp::Traces>{% endif %} {
    match cli.command {
        None | Some(Command::Serve | Command::Worker) => crate::telemetry::init(
            concat!("warn,", env!("CARGO_CRATE_NAME"), "=info"),
            std::io::stdout,
        ),
        _ => crate::telemetry::init("warn", std::io::stderr),
    }
}

/// What a command prints without reading the configuration, if it is such a command.
pub fn without_settings(cli: &Cli) -> Option<String> {
    matches!(cli.command, Some(Command::Openapi)).then(crate::openapi::json)
}

pub fn run(cli: Cli, settings: Settings) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            actix_web::rt::System::new().block_on(async {
                Application::build(settings)
                    .await?
                    .run_until_stopped()
                    .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run_command(command, settings)),
    }
}

async fn run_command(
    command: Command,
    settings: Settings,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Command::Worker = command {
        return work(settings).await;
    }
    let tenancy = Tenancy::new(settings.tenancy)?;
    let mut out = std::io::stdout().lock();
    match command {
        Command::Serve | Command::Worker => return Err("not a one-off command".into()),
        Command::Openapi => writeln!(out, "{}", crate::openapi::json())?,
        Command::Jobs(command) => jobs_command(tenancy, command, &mut out).await?,
        Command::Migrate {
            concurrency,
            create_app_role,
            plan,
            every_tenant,
        } => {
            if plan {
                drop(out);
                return migration_plan(&tenancy).await;
            }
            let mut touch = if every_tenant {
                Touch::Every
            } else {
                Touch::Pending
            };
            if create_app_role && create_app_role_once(&tenancy, &mut out).await? {
                touch = Touch::Every;
            }
            drop(out);
            return migrate(&tenancy, &Actor::migrate(), concurrency, touch).await;
        }
        Command::Tenant(command) => tenant_command(&tenancy, command, &mut out).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `migrate --create-app-role`: whether the role was created (then every tenant is
/// migrated, to grant it what exists).
async fn create_app_role_once(
    tenancy: &Tenancy,
    out: &mut impl Write,
) -> Result<bool, Box<dyn std::error::Error>> {
    let role = tenancy
        .context()
        .app_role
        .as_ref()
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default();
    let created = tenancy.create_app_role().await?;
    if created {
        writeln!(out, "created role {role}")?;
    } else {
        writeln!(out, "role {role} exists")?;
    }
    Ok(created)
}

async fn jobs_command(
    tenancy: Tenancy,
    command: JobsCommand,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    if !matches!(command, JobsCommand::List { .. }) {
        tenancy.migrate_control().await?;
    }
    let queue = Queue::new(actix_web::web::Data::new(tenancy));
    let actor = Actor::cli();
    match command {
        JobsCommand::List {
            identifier,
            state,
            limit,
        } => {
            let state = state
                .as_deref()
                .map(str::parse::<JobState>)
                .transpose()
                .map_err(|e| format!("--state: {e}"))?;
            let jobs = queue
                .jobs_of(&parse(&identifier)?, state, limit, None)
                .await?;
            list_jobs(&jobs, out)?;
        }
        JobsCommand::Retry { identifier, id } => {
            let job = queue.retry(&actor, &parse(&identifier)?, id).await?;
            writeln!(out, "job {} is {}, due now", job.id, job.state)?;
        }
        JobsCommand::Cancel { identifier, id } => {
            let job = queue.cancel(&actor, &parse(&identifier)?, id).await?;
            writeln!(out, "job {} is {}", job.id, job.state)?;
        }
    }
    Ok(())
}

async fn tenant_command(
    tenancy: &Tenancy,
    command: TenantCommand,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    if !matches!(command, TenantCommand::List) {
        tenancy.migrate_control().await?;
    }
    let actor = Actor::cli();
    match command {
        TenantCommand::Create(args) => {
            let t = tenancy.create_tenant(&actor, args.new_tenant()?).await?;
            writeln!(
                out,
                "created tenant {} ({}), status {}",
                t.identifier, t.id, t.status
            )?;
        }
        TenantCommand::List => list_tenants(tenancy, out).await?,
        TenantCommand::Suspend { identifier } => {
            let t = tenancy.suspend_tenant(&actor, &parse(&identifier)?).await?;
            writeln!(out, "tenant {} is {}", t.identifier, t.status)?;
        }
        TenantCommand::Activate { identifier } => {
            let t = tenancy
                .activate_tenant(&actor, &parse(&identifier)?)
                .await?;
            writeln!(out, "tenant {} is {}", t.identifier, t.status)?;
        }
        TenantCommand::Delete { identifier } => {
            let t = tenancy.delete_tenant(&actor, &parse(&identifier)?).await?;
            writeln!(
                out,
                "tenant {} is {} (data kept; `tenant destroy` drops it)",
                t.identifier, t.status
            )?;
        }
        TenantCommand::Maintenance { identifier, mode } => {
            let mode: Maintenance = mode.parse()?;
            let t = tenancy
                .set_maintenance(&actor, &parse(&identifier)?, mode)
                .await?;
            writeln!(out, "tenant {} maintenance {}", t.identifier, t.maintenance)?;
        }
{%- if isolation == "hybrid" %}
        TenantCommand::Move {
            identifier,
            isolation: Some(tier),
            to,
        } => {
            let tier: Isolation = tier.parse().map_err(|e| format!("--isolation: {e}"))?;
            change_tier(tenancy, &actor, &parse(&identifier)?, tier, to, out).await?;
        }
        TenantCommand::Move {
            identifier,
            to: Some(to),
            ..
        } => move_tenant(tenancy, &actor, &parse(&identifier)?, &to, out).await?,
        TenantCommand::Move { .. } => {
            return Err("tenant move: give --to or --isolation".into());
        }
{%- else %}
        TenantCommand::Move { identifier, to } => {
            move_tenant(tenancy, &actor, &parse(&identifier)?, &to, out).await?;
        }
{%- endif %}
        TenantCommand::Limits(args) => limits(tenancy, &actor, &args, out).await?,
        TenantCommand::Destroy {
            identifier,
            confirm,
            dry_run,
        } => {
            let id = parse(&identifier)?;
            if dry_run {
                destroy_plan(tenancy, &id, out).await?;
            } else {
                destroy(tenancy, &actor, &id, &confirm.unwrap_or_default(), out).await?;
            }
        }
        TenantCommand::Release { identifier } => {
            let id = parse(&identifier)?;
            tenancy.release_identifier(&actor, &id).await?;
            writeln!(out, "identifier {id} released: a new tenant may take it")?;
        }
        TenantCommand::History { identifier, limit } => {
            history(tenancy, &parse(&identifier)?, limit, out).await?;
        }
    }
    Ok(())
}

/// `tenant list`: every tenant, one line each.
async fn list_tenants(
    tenancy: &Tenancy,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    // Read first: a failure prints no half table.
    let tenants = tenancy.list_tenants().await?;
    writeln!(
        out,
        "{:<36}  {:<24}  {:<12}  {:<9}  {:<24}  name",
        "id", "identifier", "status", "isolation", "server"
    )?;
    for t in tenants {
        let mark = if t.metadata_undecodable() {
            "  (metadata cannot be decoded: fix it in SQL)"
        } else {
            ""
        };
        let server = t.server.as_ref().map_or("default", ServerAddress::as_str);
        writeln!(
            out,
            "{:<36}  {:<24}  {:<12}  {:<9}  {server:<24}  {}{mark}",
            t.id, t.identifier, t.status, t.isolation, t.name
        )?;
    }
    Ok(())
}

/// `--to`: a server of TENANCY_DATABASE_SERVERS, or `default` (`None`).
fn server_arg(to: &str) -> Result<Option<ServerAddress>, String> {
    match to {
        "default" => Ok(None),
        server => ServerAddress::parse(server)
            .map(Some)
            .map_err(|e| format!("--to: {e}")),
    }
}

/// `tenant move --to`: to another server, step by step on stderr.
async fn move_tenant(
    tenancy: &Tenancy,
    actor: &Actor,
    id: &TenantIdentifier,
    to: &str,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let moved = tenancy
        .move_tenant(actor, id, server_arg(to)?, |step| {
            eprintln!("tenant {id}: {step}")
        })
        .await?;
    let to = server_name(moved.to.as_ref());
    print_moved(out, &moved, to)
}
{%- if isolation == "hybrid" %}

/// `tenant move --isolation`: to another tier (on the server of `--to`, for `database`).
async fn change_tier(
    tenancy: &Tenancy,
    actor: &Actor,
    id: &TenantIdentifier,
    tier: Isolation,
    to: Option<String>,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let server = match to {
        None => None,
        Some(to) => server_arg(&to)?,
    };
    let moved = tenancy
        .change_tier(actor, id, tier, server, |step| {
            eprintln!("tenant {id}: {step}")
        })
        .await?;
    print_moved(out, &moved, &format!("tier {}", moved.isolation))
}
{%- endif %}

/// What a finished move prints: where `to`, what was copied, how long the tenant was
/// read-only.
fn print_moved(
    out: &mut impl Write,
    moved: &Moved,
    to: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let rows: u64 = moved.tables.iter().map(|t| t.rows).sum();
    writeln!(
        out,
        "tenant {} moved to {to}: {rows} rows in {} tables copied; read-only for {:.2} s",
        moved.identifier,
        moved.tables.len(),
        moved.read_only_ms as f64 / 1000.0
    )?;
    Ok(())
}

/// `tenant limits`: sets those given, then prints each with its default.
async fn limits(
    tenancy: &Tenancy,
    actor: &Actor,
    args: &LimitsArgs,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let id = parse(&args.identifier)?;
    let mut t = tenancy.get_tenant(&id).await?;
    if let Some(limits) = args.over(t.limits)? {
        t = tenancy.set_limits(actor, &id, limits).await?;
    }
    let settings = &tenancy.settings;
    let own = t.limits;
    let rows = [
        (
            "max_connections",
            own.max_connections.map(|n| n.get()),
            format!(
                "{}, TENANCY_TENANT_MAX_CONNECTIONS",
                settings.database.per_tenant_max()
            ),
        ),
        (
            "statement_timeout",
            own.statement_timeout.map(|n| n.get()),
            format!(
                "{} s, TENANCY_STATEMENT_TIMEOUT",
                settings.database.statement_timeout.as_secs()
            ),
        ),
        (
            "rate_limit",
            own.rate_limit.map(|n| n.get()),
            match settings.rate.rate {
                Some(n) => format!("{n}/s, TENANCY_RATE_LIMIT"),
                None => "none, TENANCY_RATE_LIMIT".to_owned(),
            },
        ),
        (
            "rate_limit_burst",
            own.rate_limit_burst.map(|n| n.get()),
            match settings.rate.burst {
                Some(n) => format!("{n}, TENANCY_RATE_LIMIT_BURST"),
                None => "one second's worth, TENANCY_RATE_LIMIT_BURST".to_owned(),
            },
        ),
    ];
    writeln!(out, "tenant {}", t.identifier)?;
    for (name, value, default) in rows {
        match value {
            Some(n) => writeln!(out, "  {name:<18} {n}")?,
            None => writeln!(out, "  {name:<18} default ({default})")?,
        }
    }
    Ok(())
}

/// `tenant destroy`.
async fn destroy(
    tenancy: &Tenancy,
    actor: &Actor,
    id: &TenantIdentifier,
    confirm: &str,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    tenancy.destroy_tenant(actor, id, confirm).await?;
    writeln!(out, "tenant {id} destroyed")?;
    match tenancy.settings.identifier_quarantine_days {
        0 => {}
        days => writeln!(
            out,
            "identifier {id} is quarantined for {days} days \
             (`tenant release {id}` frees it earlier)"
        )?,
    }
    Ok(())
}

/// `tenant history`: the audit trail of one tenant, newest first.
async fn history(
    tenancy: &Tenancy,
    id: &TenantIdentifier,
    limit: i64,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let entries = tenancy.history(id, limit, None).await?;
    if entries.is_empty() {
        writeln!(out, "no recorded operation on {id}")?;
    } else {
        writeln!(
            out,
            "{:<20}  {:<20}  {:<11}  {:<7}  {:>7}  details",
            "at (UTC)", "actor", "operation", "result", "ms"
        )?;
    }
    for e in entries {
        let mut details = match e.params.as_object() {
            Some(p) if p.is_empty() => String::new(),
            _ => e.params.to_string(),
        };
        if let Some(error) = &e.error {
            details = format!("{details} error: {error}").trim().to_owned();
        }
        writeln!(
            out,
            "{:<20}  {:<20}  {:<11}  {:<7}  {:>7}  {details}",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            e.actor,
            e.operation,
            e.result,
            e.duration_ms
        )?;
    }
    Ok(())
}

/// `worker`: job workers until SIGTERM or Ctrl-C, then a graceful stop (jobs in hand
/// finish within TENANCY_SHUTDOWN_TIMEOUT or go back to the queue).
async fn work(settings: Settings) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let count = settings.jobs.workers;
    if count == 0 {
        return Err("TENANCY_JOBS_WORKERS is 0: a worker process would run no job".into());
    }
    let tenancy = prepare(&settings).await?;
    let workers = Workers::start(
        Queue::new(tenancy),
        job_kinds(),
        settings.jobs.clone(),
        settings.http.shutdown_timeout,
    );
    tracing::info!(workers = count, "job workers running");
    shutdown_signal().await;
    tracing::info!("stopping: jobs in hand finish or go back to the queue");
    workers.stop().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A table of jobs.
fn list_jobs(jobs: &[JobRecord], out: &mut impl Write) -> std::io::Result<()> {
    if jobs.is_empty() {
        return writeln!(out, "no jobs");
    }
    writeln!(
        out,
        "{:>10}  {:<16}  {:<9}  {:>8}  {:<20}  last error / result",
        "id", "kind", "state", "attempts", "run at (UTC)"
    )?;
    for job in jobs {
        let outcome = match (&job.last_error, &job.result) {
            (_, Some(result)) if job.state == JobState::Done => result.to_string(),
            (Some(error), _) => error.clone(),
            _ => String::new(),
        };
        writeln!(
            out,
            "{:>10}  {:<16}  {:<9}  {:>8}  {:<20}  {outcome}",
            job.id,
            job.kind,
            job.state,
            format!("{}/{}", job.attempts, job.max_attempts),
            job.run_at.format("%Y-%m-%d %H:%M:%S"),
        )?;
    }
    Ok(())
}

/// A limit given on the command line: `None` when not given, `Some(None)` for `default`.
fn limit<T: std::str::FromStr<Err = String>>(
    flag: &str,
    value: Option<&str>,
) -> Result<Option<Option<T>>, String> {
    match value {
        None => Ok(None),
        Some("default") => Ok(Some(None)),
        Some(value) => value
            .parse()
            .map(|n| Some(Some(n)))
            .map_err(|e| format!("{flag}: {e}")),
    }
}

/// `tenant destroy --dry-run`: what would go, and whether destroy would run now.
async fn destroy_plan(
    tenancy: &Tenancy,
    id: &TenantIdentifier,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let (tenant, plan) = tenancy.destroy_plan(id).await?;
    if plan.exists {
        writeln!(
            out,
            "tenant {id} ({}): destroy would drop {}",
            tenant.status, plan.storage
        )?;
    } else {
        writeln!(
            out,
            "tenant {id} ({}): {} does not exist; destroy would remove the registry row only",
            tenant.status, plan.storage
        )?;
    }
    if !plan.tables.is_empty() {
        let width = plan
            .tables
            .iter()
            .map(|t| t.table.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(out, "  {:<width$}  {:>12}", "table", "rows")?;
        for t in &plan.tables {
            writeln!(out, "  {:<width$}  {:>12}", t.table, t.rows)?;
        }
        let rows: i64 = plan.tables.iter().map(|t| t.rows).sum();
        writeln!(
            out,
            "  {} table(s), {rows} row(s) in all",
            plan.tables.len()
        )?;
    }
    match tenancy.settings.identifier_quarantine_days {
        0 => writeln!(out, "the identifier would be free for a new tenant at once")?,
        days => writeln!(out, "identifier {id} would be quarantined for {days} days")?,
    }
    if tenant.status != TenantStatus::Deleted {
        writeln!(
            out,
            "destroy refuses it now: it is {}; `tenant delete {id}` first",
            tenant.status
        )?;
    }
    writeln!(out, "nothing was changed (dry run)")?;
    Ok(())
}

fn parse(identifier: &str) -> Result<TenantIdentifier, String> {
    TenantIdentifier::parse(identifier).map_err(|why| format!("'{identifier}': {why}"))
}

async fn migrate(
    tenancy: &Tenancy,
    actor: &Actor,
    concurrency: usize,
    touch: Touch,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut err = std::io::stderr();
    let report = tenancy
        .migrate_all(actor, concurrency, touch, |p| {
            let outcome = match p.result {
                Ok(applied) if applied.is_empty() => "up to date".to_string(),
                Ok(applied) => format!("applied {}", applied.join(", ")),
                Err(e) => format!("FAILED: {e}"),
            };
            let eta = match p.done < p.total {
                true => format!(" (about {} s left)", p.eta().as_secs()),
                false => String::new(),
            };
            let _ = writeln!(
                err,
                "[{}/{}] {}: {}{eta}",
                p.done, p.total, p.tenant, outcome
            );
        })
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "control plane: {} migration(s) applied; tenants: {} total, {} pending, {} changed, {} failed",
        report.control_applied.len(),
        report.tenants,
        report.tenants_pending,
        report.tenants_changed,
        report.failures.len()
    )?;
    for (tenant, error) in &report.failures {
        writeln!(out, "  {tenant}: {error}")?;
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `migrate --plan`: what would be applied; exit code 2 when anything would.
async fn migration_plan(tenancy: &Tenancy) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let plan = tenancy.plan_migrations().await?;
    let mut out = std::io::stdout().lock();
    match plan.control.as_slice() {
        [] => writeln!(out, "control plane: up to date")?,
        pending => writeln!(out, "control plane: would apply {}", pending.join(", "))?,
    }
    for (tenant, versions) in &plan.pending {
        writeln!(out, "tenant {tenant}: would apply {}", versions.join(", "))?;
    }
    for (tenant, why) in &plan.unread {
        writeln!(out, "tenant {tenant}: could not be read: {why}")?;
    }
    let unread = match plan.unread.len() {
        0 => String::new(),
        n => format!(", {n} not read"),
    };
    writeln!(
        out,
        "tenants: {} total, {} pending, {} up to date{unread}",
        plan.tenants,
        plan.pending.len(),
        plan.tenants - plan.pending.len() - plan.unread.len()
    )?;
    Ok(if !plan.unread.is_empty() {
        ExitCode::FAILURE
    } else if plan.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
