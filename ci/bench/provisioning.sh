#!/usr/bin/env bash
# Benchmark: the cost of tenants per isolation strategy. For each strategy, generates the
# service (release build), creates TENANTS tenants with the CLI, then adds a tenant
# migration, rebuilds, and times `migrate` applying it to every tenant (and once more
# with nothing pending). Reports seconds; it does not pass or fail.
#
#   bash ci/bench/provisioning.sh                        # 100 tenants; schema rls database
#   TENANTS=300 STRATEGIES="schema database" bash ci/bench/provisioning.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

TENANTS=${TENANTS:-100}
STRATEGIES=${STRATEGIES:-schema rls database}
ensure_cargo_generate
ensure_postgres
use_shared_target_dir
base="${TENANCY_TEST_DATABASE_URL%/*}"

results=()
for strategy in $STRATEGIES; do
  project=$(generate "$root" acme-api "isolation=$strategy")
  say "$strategy: building (release)"
  (cd "$project" && cargo build --locked --quiet --release)
  cli="$CARGO_TARGET_DIR/release/acme-api"
  database="actix_tenancy_bench_$strategy"
  psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
  export TENANCY_DATABASE_URL="$base/$database" TENANCY_TENANT_DATABASE_PREFIX=bench_ RUST_LOG=error
  [ "$strategy" = database ] || unset TENANCY_TENANT_DATABASE_PREFIX
  "$cli" migrate >/dev/null

  say "$strategy: creating $TENANTS tenants"
  start=$(now)
  for i in $(seq 1 "$TENANTS"); do "$cli" tenant create "t$i" --name "Tenant $i" >/dev/null; done
  create=$(since "$start")

  say "$strategy: adding a tenant migration and applying it to every tenant"
  migrations=$(find "$project/migrations" -maxdepth 1 -name 'tenant_*' -type d)
  mkdir -p "$migrations/2026-06-01-000000_bench_column"
  echo "ALTER TABLE notes ADD COLUMN bench_column integer;" >"$migrations/2026-06-01-000000_bench_column/up.sql"
  echo "ALTER TABLE notes DROP COLUMN bench_column;" >"$migrations/2026-06-01-000000_bench_column/down.sql"
  touch "$project/src/db/migrate.rs" "$project/src/tenancy/isolation/$strategy.rs"
  (cd "$project" && cargo build --locked --quiet --release)
  start=$(now)
  "$cli" migrate >/dev/null 2>&1
  apply=$(since "$start")
  start=$(now)
  "$cli" migrate >/dev/null 2>&1
  noop=$(since "$start")

  results+=("$(printf '%-9s %8s %14s %18s %16s' "$strategy" "$TENANTS" "${create}s" "${apply}s" "${noop}s")")
  if [ "$strategy" = database ]; then
    psql "$TENANCY_TEST_DATABASE_URL" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'bench\_%'" \
      | while read -r name; do psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE \"$name\" WITH (FORCE)"; done
  fi
  psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"
  rm -rf "$(dirname "$project")"
done

echo
echo "$(nproc) cores, PostgreSQL on loopback, one CLI process per tenant creation"
printf '%-9s %8s %14s %18s %16s\n' strategy tenants "create all" "migrate (1 new)" "migrate (none)"
printf '%s\n' "${results[@]}"
