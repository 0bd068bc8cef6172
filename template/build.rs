//! Rebuild when a migration is added or changed: `embed_migrations!` reads the
//! `migrations/` directory at compile time, and cargo does not watch it by itself.
//!
//! With schema per tenant, also writes `$OUT_DIR/tenant_schema_sql.rs`: each tenant
//! migration's version (as diesel records it) and `up.sql`, which `migrate` hands to the
//! database so that `tenancy.provision_schema` can create a tenant's schema for the
//! application role.
//!
//! Refuses to build when two control-plane migrations (`migrations/control*`) have the
//! same version: they are recorded in one table, `tenancy.__diesel_schema_migrations`, so
//! the second would be taken as applied and never run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=migrations");
    check_control_versions()?;
    let folder = Path::new("migrations/tenant_schema");
    if !folder.is_dir() {
        return Ok(());
    }
    let mut migrations = Vec::new();
    for (name, path) in migrations_in(folder)? {
        migrations.push((version(&name), std::fs::canonicalize(path.join("up.sql"))?));
    }
    migrations.sort();
    let mut code = String::from("&[\n");
    for (version, up) in migrations {
        writeln!(code, "    ({version:?}, include_str!({:?})),", up.display())?;
    }
    code.push(']');
    let out = Path::new(&std::env::var("OUT_DIR")?).join("tenant_schema_sql.rs");
    std::fs::write(out, code)?;
    Ok(())
}

/// The migrations in `folder`: each one's folder name and path (one with an `up.sql`).
fn migrations_in(folder: &Path) -> std::io::Result<Vec<(String, std::path::PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.starts_with('.') && path.join("up.sql").is_file() {
            found.push((name.to_owned(), path));
        }
    }
    Ok(found)
}

/// diesel's version of migration folder `name`: up to the first '_', without dashes.
fn version(name: &str) -> String {
    name.split('_').next().unwrap_or_default().replace('-', "")
}

fn check_control_versions() -> Result<(), Box<dyn std::error::Error>> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for set in std::fs::read_dir("migrations")? {
        let set = set?.path();
        let set_name = set.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !set.is_dir() || !set_name.starts_with("control") {
            continue;
        }
        for (name, _) in migrations_in(&set)? {
            let here = format!("{set_name}/{name}");
            if let Some(first) = seen.insert(version(&name), here.clone()) {
                return Err(format!(
                    "migrations/{here} has the version of migrations/{first}: control-plane \
                     migrations share one record table, so one would never run; rename it"
                )
                .into());
            }
        }
    }
    Ok(())
}
