#!/usr/bin/env bash
# Benchmark: `migrate` across a fleet of tenants (schema per tenant, release build,
# generated defaults: `--concurrency 4`). Registers TENANTS tenants straight in the
# registry (SQL: creating 10,000 through the CLI would time process start-ups, not
# migrate), then times `migrate` provisioning every schema, `migrate` with nothing
# pending, `migrate --plan`, and, after a tenant migration is added and the binary
# rebuilt, `migrate` applying it everywhere. Reports seconds; it does not pass or fail.
#
#   bash ci/bench/migrate_fleet.sh                 # 10,000 tenants
#   TENANTS=1000 bash ci/bench/migrate_fleet.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

TENANTS=${TENANTS:-10000}
ensure_cargo_generate
ensure_postgres
use_shared_target_dir
base="${TENANCY_TEST_DATABASE_URL%/*}"

project=$(generate "$root" acme-api "isolation=schema")
say "building (release)"
(cd "$project" && cargo build --locked --quiet --release)
cli="$CARGO_TARGET_DIR/release/acme-api"
database=actix_tenancy_bench_fleet
psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
trap 'psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
export TENANCY_DATABASE_URL="$base/$database" RUST_LOG=error
"$cli" migrate >/dev/null

say "registering $TENANTS tenants"
psql "$TENANCY_DATABASE_URL" -qc "INSERT INTO tenancy.tenants (id, identifier, name, status, isolation)
  SELECT gen_random_uuid(), 't' || i, 'Tenant ' || i, 'active', 'schema' FROM generate_series(1, $TENANTS) AS i"

timed() { # label, command...: runs it, keeps its last line of stderr, prints seconds
  local label=$1 start code=0; shift
  start=$(now)
  "$@" >/tmp/migrate_fleet.out 2>/tmp/migrate_fleet.err || code=$?
  printf '%-44s %7ss  exit %s  %s\n' "$label" "$(since "$start")" "$code" "$(tail -n 1 /tmp/migrate_fleet.out)"
  # Exit 2 is --plan's "something pending".
  if [ "$code" != 0 ] && [ "$code" != 2 ]; then tail -n 5 /tmp/migrate_fleet.err >&2; fi
}

results=()
results+=("$(timed "migrate: every schema new" "$cli" migrate)")
results+=("$(timed "migrate: nothing pending" "$cli" migrate)")
results+=("$(timed "migrate --plan: nothing pending" "$cli" migrate --plan)")

say "adding a tenant migration"
dir="$project/migrations/tenant_schema/2026-06-01-000000_bench_column"
mkdir -p "$dir"
echo "ALTER TABLE notes ADD COLUMN bench_column integer;" >"$dir/up.sql"
echo "ALTER TABLE notes DROP COLUMN bench_column;" >"$dir/down.sql"
touch "$project/src/tenancy/isolation/schema.rs"
(cd "$project" && cargo build --locked --quiet --release)
results+=("$(timed "migrate --plan: one pending everywhere" "$cli" migrate --plan)")
results+=("$(timed "migrate: one pending everywhere" "$cli" migrate)")
results+=("$(timed "migrate: nothing pending" "$cli" migrate)")

echo
echo "migrate across $TENANTS tenants, schema per tenant (release, --concurrency 4; $(nproc) cores)"
printf '%s\n' "${results[@]}"
rm -f /tmp/migrate_fleet.out /tmp/migrate_fleet.err
rm -rf "$(dirname "$project")"
