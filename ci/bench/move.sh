#!/usr/bin/env bash
# Benchmark: `tenant move` (database per tenant, release build, generated defaults)
# between the local PostgreSQL and a second, throwaway one (ci/lib.sh). For each size in
# ROWS (notes of a 200-character body), one tenant is filled with SQL, then:
#   - bare: the same rows piped from one server to the other with psql, binary COPY out
#     into COPY in (the floor: no locking, no checks, no registry);
#   - move: `tenant move <id> --to <other>`, its wall time and the read-only time it
#     reports (what the tenant's writers see).
# Reports seconds; it does not pass or fail. The numbers are the generated defaults' on
# this machine: two local clusters (fsync off on the second), not a network.
#
#   bash ci/bench/move.sh
#   ROWS="1000 100000" bash ci/bench/move.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

ROWS=${ROWS:-1000 10000 100000 1000000}
ensure_cargo_generate
ensure_postgres
ensure_other_postgres
use_shared_target_dir
base="${TENANCY_TEST_DATABASE_URL%/*}"
other="$TENANCY_TEST_OTHER_SERVER"
other_base="${base%@*}@$other"
database=actix_tenancy_bench_move
prefix=bmv_
role=actix_tenancy_bench_move_app
password=$(openssl rand -hex 16)

project=$(generate "$root" acme-api "isolation=database")
say "building (release)"
(cd "$project" && cargo build --locked --quiet --release)
cli="$CARGO_TARGET_DIR/release/acme-api"

clean() {
  for server in "$base" "$other_base"; do
    for db in $(psql "$server/postgres" -qAtc "SELECT datname FROM pg_database WHERE starts_with(datname, '$prefix') OR datname IN ('$database', 'bare_copy')"); do
      psql "$server/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
    done
    psql "$server/postgres" -qc "DROP ROLE IF EXISTS $role" >/dev/null
  done
}
clean
trap 'clean; [ -z "${OTHER_POSTGRES_DIR:-}" ] || stop_other_postgres' EXIT
psql "$base/postgres" -qc "CREATE DATABASE $database"
# Roles belong to a server: the application role on both, with the same password.
psql "$other_base/postgres" -qc "CREATE ROLE $role LOGIN PASSWORD '$password'"
export TENANCY_MIGRATION_DATABASE_URL="$base/$database"
export TENANCY_DATABASE_URL="postgres://$role:$password@${base#*@}/$database"
export TENANCY_TENANT_DATABASE_PREFIX=$prefix TENANCY_DATABASE_SERVERS=$other
export TENANCY_DATABASE_PLACEMENT=default RUST_LOG=error
"$cli" migrate --create-app-role >/dev/null

results=()
for rows in $ROWS; do
  tenant="r$rows"
  say "$tenant: $rows notes"
  "$cli" tenant create "$tenant" --name "Tenant $rows" >/dev/null
  psql "$base/$prefix$tenant" -qc "INSERT INTO notes (title, body)
    SELECT 'note ' || g, repeat('x', 200) FROM generate_series(1, $rows) g" -c "VACUUM ANALYZE notes"

  psql "$other_base/postgres" -qc "DROP DATABASE IF EXISTS bare_copy" -c "CREATE DATABASE bare_copy"
  pg_dump --schema-only --no-owner --no-privileges "$base/$prefix$tenant" | psql "$other_base/bare_copy" -q >/dev/null
  start=$(now)
  psql "$base/$prefix$tenant" -qAtc "COPY notes TO STDOUT (FORMAT binary)" \
    | psql "$other_base/bare_copy" -qc "COPY notes FROM STDIN (FORMAT binary)"
  bare=$(since "$start" 2)

  start=$(now)
  out=$("$cli" tenant move "$tenant" --to "$other" 2>/dev/null)
  move=$(since "$start" 2)
  read_only=$(grep -oE 'read-only for [0-9.]+ s' <<<"$out" | grep -oE '[0-9.]+')
  results+=("$(printf '%9s %12s %12s %14s' "$rows" "$bare" "$move" "$read_only")")
done

echo
echo "tenant move, database per tenant, release build, generated defaults"
printf '%9s %12s %12s %14s\n' rows "bare copy s" "move s" "read-only s"
printf '%s\n' "${results[@]}"
