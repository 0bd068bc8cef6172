//! Rebuild when a migration is added or changed: `embed_migrations!` reads the
//! `migrations/` directory at compile time, and cargo does not watch it by itself.
//!
//! With schema per tenant, also writes `$OUT_DIR/tenant_schema_sql.rs`: each tenant
//! migration's version (as diesel records it) and `up.sql`, which `migrate` hands to the
//! database so that `tenancy.provision_schema` can create a tenant's schema for the
//! application role.

use std::fmt::Write as _;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=migrations");
    let folder = Path::new("migrations/tenant_schema");
    if !folder.is_dir() {
        return Ok(());
    }
    let mut migrations = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        let up = path.join("up.sql");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') || !up.is_file() {
            continue;
        }
        // diesel's version: the name up to the first '_', without its dashes.
        let version = name.split('_').next().unwrap_or_default().replace('-', "");
        migrations.push((version, std::fs::canonicalize(up)?));
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
