#!/usr/bin/env bash
# Benchmark: hybrid's changes of tier (`tenant move <id> --isolation <tier>`, release
# build, generated defaults) on the local PostgreSQL. For each size in ROWS (notes of a
# 200-character body), one tenant of tier rls is filled with SQL, then moved up and back
# down: rls -> schema -> database -> schema -> rls. For each step, the command's wall
# time and the read-only time it reports (what the tenant's writers see; on the way
# from rls, every rls tenant's writers wait as long). Bare baselines, same run:
#   - bare rls->schema: the tenant's rows copied by one INSERT ... SELECT from the shared
#     table into an empty table of the same columns (no lock, no delete, no registry);
#   - bare schema->database: that table piped into another database with psql, binary
#     COPY out into COPY in.
# Reports seconds; it does not pass or fail. The numbers are the generated defaults' on
# this machine (one local server, 2 cores), not a network.
#
#   bash ci/bench/tiers.sh
#   ROWS="1000 100000" bash ci/bench/tiers.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

ROWS=${ROWS:-1000 10000 100000 1000000}
ensure_cargo_generate
ensure_postgres
use_shared_target_dir
base="${TENANCY_TEST_DATABASE_URL%/*}"
database=actix_tenancy_bench_tiers
prefix=btr_
role=actix_tenancy_bench_tiers_app
password=$(openssl rand -hex 16)

project=$(generate "$root" acme-api "isolation=hybrid")
say "building (release)"
(cd "$project" && cargo build --locked --quiet --release)
cli="$CARGO_TARGET_DIR/release/acme-api"

clean() {
  for db in $(psql "$base/postgres" -qAtc "SELECT datname FROM pg_database WHERE starts_with(datname, '$prefix') OR datname IN ('$database', 'bare_tiers')"); do
    psql "$base/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  done
  psql "$base/postgres" -qc "DROP ROLE IF EXISTS $role" >/dev/null
}
clean
trap clean EXIT
psql "$base/postgres" -qc "CREATE DATABASE $database"
export TENANCY_MIGRATION_DATABASE_URL="$base/$database"
export TENANCY_DATABASE_URL="postgres://$role:$password@${base#*@}/$database"
export TENANCY_TENANT_DATABASE_PREFIX=$prefix TENANCY_DATABASE_PLACEMENT=default
export TENANCY_DEFAULT_ISOLATION=rls RUST_LOG=error
"$cli" migrate --create-app-role >/dev/null
shared="$base/$database"

results=()
for rows in $ROWS; do
  tenant="r$rows"
  say "$tenant: $rows notes"
  "$cli" tenant create "$tenant" --name "Tenant $rows" >/dev/null
  id=$(psql "$shared" -qAtc "SELECT id FROM tenancy.tenants WHERE identifier = '$tenant'")
  psql "$shared" -qc "INSERT INTO tenancy_data.notes (tenant_id, title, body)
    SELECT '$id', 'note ' || g, repeat('x', 200) FROM generate_series(1, $rows) g" \
    -c "VACUUM ANALYZE tenancy_data.notes"

  # The floors: the same rows copied with nothing around them.
  psql "$shared" -qc "DROP TABLE IF EXISTS public.bare_notes" \
    -c "CREATE TABLE public.bare_notes (id uuid PRIMARY KEY, title text NOT NULL,
          body text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)"
  start=$(now)
  psql "$shared" -qc "INSERT INTO public.bare_notes SELECT id, title, body, created_at, updated_at
    FROM tenancy_data.notes WHERE tenant_id = '$id'"
  bare_schema=$(since "$start" 2)
  psql "$base/postgres" -qc "DROP DATABASE IF EXISTS bare_tiers" -c "CREATE DATABASE bare_tiers"
  pg_dump --schema-only --no-owner --no-privileges -t public.bare_notes "$shared" | psql "$base/bare_tiers" -q >/dev/null
  start=$(now)
  psql "$shared" -qAtc "COPY public.bare_notes TO STDOUT (FORMAT binary)" \
    | psql "$base/bare_tiers" -qc "COPY public.bare_notes FROM STDIN (FORMAT binary)"
  bare_database=$(since "$start" 2)
  psql "$shared" -qc "DROP TABLE public.bare_notes"

  line=$(printf '%9s %10s %10s' "$rows" "$bare_schema" "$bare_database")
  for tier in schema database schema rls; do
    start=$(now)
    out=$("$cli" tenant move "$tenant" --isolation "$tier" 2>/dev/null)
    took=$(since "$start" 2)
    read_only=$(grep -oE 'read-only for [0-9.]+ s' <<<"$out" | grep -oE '[0-9.]+')
    line+=$(printf ' %7s/%-6s' "$read_only" "$took")
  done
  results+=("$line")
done

echo
echo "tenant move --isolation, hybrid, release build, generated defaults; each step: read-only s / command s"
printf '%9s %10s %10s %14s %14s %14s %14s\n' rows "bare ->sch" "bare ->db" "rls->schema" "schema->db" "db->schema" "schema->rls"
printf '%s\n' "${results[@]}"
