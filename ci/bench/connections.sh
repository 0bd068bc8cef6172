#!/usr/bin/env bash
# Benchmark: the generated service's tenant-scoped read against a bare read, with the
# generated defaults (no pool setting is overridden), for each isolation strategy and
# tenant count, every request another tenant (uniform rotation).
#
#   bash ci/bench/connections.sh                            # schema rls database x 10 100 1000
#   STRATEGIES=schema COUNTS="10 1000" DURATION=20s bash ci/bench/connections.sh
#   STRATEGIES="rls hybrid" ...                             # hybrid: tenants of tier rls
#
# For each strategy and count it creates the tenants (1,000 notes each for 10 tenants,
# 100 for more), then runs, one after the other under `wrk -t2 -c32`:
#   bare    the service's own pool (40 connections), connection set-up and statement cache
#           with no tenancy at all, on one schema holding the same rows
#           (ci/bench/bench_server.rs);
#   scoped  the generated service (`serve`), `GET /api/notes?limit=20` with X-Tenant-ID.
# The service is measured twice: just after it started (2 s of warm-up, as for bare), and
# again after WARM more seconds of the same load (default 30 s): with schema per tenant,
# each PostgreSQL backend loads a tenant's tables into its catalog caches the first time
# it serves that tenant, so a service that just started meets thousands of tenants cold,
# and one that has run for a minute is at the speed it keeps.
# It reports requests/s, p50 and p99 latency, scoped/bare, the PostgreSQL connections
# opened per request during the measurement (pg_stat_database.sessions) and the service's
# re-scopes per request (its /health counters). It reports numbers; it does not pass or
# fail.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

STRATEGIES=${STRATEGIES:-schema rls database}
COUNTS=${COUNTS:-10 100 1000}
DURATION=${DURATION:-10s} CONNECTIONS=${CONNECTIONS:-32} PORT=${PORT:-8799} WARM=${WARM:-30}
BARE_POOL=${BARE_POOL:-40}

ensure_cargo_generate
ensure_postgres
command -v wrk >/dev/null 2>&1 || die "wrk is missing (apt-get install wrk)"
use_shared_target_dir
server_url=${TENANCY_TEST_DATABASE_URL%/*}
database=actix_tenancy_bench
prefix=bt_
owner_url="$server_url/$database"
app_url="${owner_url/:\/\/postgres@/://bench_app:bench_app_password@}"
sql() { psql "$server_url/${2:-$database}" -qtAX -v ON_ERROR_STOP=1 -c "$1"; }

drop_all() {
  for db in $(sql "SELECT datname FROM pg_database WHERE datname LIKE '${prefix}%'" postgres); do
    sql "DROP DATABASE \"$db\" WITH (FORCE)" postgres
  done
  sql "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres
}
sessions() { sql "SELECT sum(sessions) FROM pg_stat_database" postgres; }

wait_http() {
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null -H 'X-Tenant-ID: t0' "http://127.0.0.1:$PORT/api/notes" && return
    sleep 0.2
  done
  die "the server on port $PORT did not answer"
}

# Re-scopes the generated service has done so far (its /health counters; 0 for bare).
rescopes() {
  curl -fs "http://127.0.0.1:$PORT/health" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["connections"]["tenant"]["rescoped"])' 2>/dev/null ||
    echo 0
}

# measure NAME WARM-UP -> "req/s p50 p99 connections-per-request re-scopes-per-request" of
# the server on $PORT, after WARM-UP seconds of the same load
measure() {
  local out=/tmp/actix-tenancy-bench-$1.txt before after requests scoped_before scoped_after
  wrk -t2 -c"$CONNECTIONS" -d"$2s" -s "$root/ci/bench/rotate.lua" "http://127.0.0.1:$PORT" >/dev/null
  sleep 1.5 # pg_stat_database is flushed about once a second
  before=$(sessions)
  scoped_before=$(rescopes)
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$root/ci/bench/rotate.lua" \
    "http://127.0.0.1:$PORT" >"$out"
  scoped_after=$(rescopes)
  sleep 1.5
  after=$(sessions)
  if grep -qE 'Non-2xx|Socket errors' "$out"; then say "$1: $(grep -E 'Non-2xx|Socket errors' "$out" | tr '\n' ' ')"; fi
  requests=$(awk '/requests in/ {print $1}' "$out")
  awk -v c="$((after - before - 1))" -v r="$((scoped_after - scoped_before))" -v n="$requests" '
    /Requests\/sec/ {rps = $2}
    $1 == "50%" {p50 = $2}
    $1 == "99%" {p99 = $2}
    END {printf "%d %s %s %.4f %.2f\n", rps, p50, p99, (c < 0 ? 0 : c) / n, r / n}' "$out"
}

rows_for() { if [ "$1" -le 10 ]; then echo 1000; else echo 100; fi; }

results=()
trap 'drop_all >/dev/null 2>&1; sql "DROP ROLE IF EXISTS bench_app" postgres >/dev/null 2>&1 || true' EXIT
for strategy in $STRATEGIES; do
  project=$(generate "$root" acme-api "isolation=$strategy")
  mkdir -p "$project/examples"
  cp "$root/ci/bench/bench_server.rs" "$project/examples/bench_server.rs"
  say "$strategy: building the service and the bare server (release)"
  (cd "$project" && cargo build --locked --quiet --release --bin acme-api --example bench_server)
  cli="$CARGO_TARGET_DIR/release/acme-api"
  bare_server="$CARGO_TARGET_DIR/release/examples/bench_server"
  for count in $COUNTS; do
    rows=$(rows_for "$count")
    drop_all
    sql "CREATE DATABASE $database" postgres
    sql "DROP ROLE IF EXISTS bench_app" postgres
    # Plain TCP for both, as the measurements so far (the default `sslmode=prefer` would
    # encrypt where the server offers TLS).
    export TENANCY_DATABASE_URL="$app_url?sslmode=disable" TENANCY_MIGRATION_DATABASE_URL=$owner_url \
      TENANCY_TENANT_DATABASE_PREFIX=$prefix TENANCY_HOST=127.0.0.1 TENANCY_PORT=$PORT \
      RUST_LOG=warn TENANTS=$count
    [ "$strategy" = database ] || unset TENANCY_TENANT_DATABASE_PREFIX
    say "$strategy: creating $count tenants with $rows notes each"
    "$cli" migrate --create-app-role >/dev/null
    for i in $(seq 0 $((count - 1))); do "$cli" tenant create "t$i" --name "Tenant $i" >/dev/null; done
    insert="INSERT INTO notes (title) SELECT 'note ' || g FROM generate_series(1, $rows) g"
    case $strategy in
      schema) sql "DO \$\$ DECLARE s text; BEGIN
                 FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_t%' LOOP
                   EXECUTE format('INSERT INTO %I.notes (title) SELECT ''note '' || g FROM generate_series(1, $rows) g', s);
                 END LOOP; END \$\$" ;;
      # hybrid: its tenants are created in its default tier, rls.
      rls | hybrid) sql "INSERT INTO tenancy_data.notes (tenant_id, title)
                SELECT t.id, 'note ' || g FROM tenancy.tenants t, generate_series(1, $rows) g" ;;
      database) for i in $(seq 0 $((count - 1))); do sql "$insert" "${prefix}t$i"; done ;;
    esac
    sql "CREATE SCHEMA bench_bare;
         CREATE TABLE bench_bare.notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
           title text NOT NULL, body text NOT NULL DEFAULT '',
           created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO bench_bare.notes (title) SELECT 'note ' || g FROM generate_series(1, $rows) g;
         GRANT USAGE ON SCHEMA bench_bare TO bench_app; GRANT SELECT ON bench_bare.notes TO bench_app"
    sql "VACUUM ANALYZE" >/dev/null

    BENCH_DATABASE_URL="$app_url?options=-c%20search_path%3Dbench_bare&sslmode=disable" BENCH_POOL=$BARE_POOL \
      BENCH_PORT=$PORT "$bare_server" & pid=$!
    wait_http
    read -r bare_rps bare_p50 bare_p99 bare_cpr _ < <(measure bare 2)
    kill "$pid"; wait "$pid" 2>/dev/null || true

    "$cli" serve >/dev/null 2>&1 & pid=$!
    wait_http
    read -r rps p50 p99 _ < <(measure "$strategy" 2)
    read -r warm_rps warm_p50 warm_p99 cpr rpr < <(measure "$strategy" "$WARM")
    kill "$pid"; wait "$pid" 2>/dev/null || true

    ratio=$(awk -v s="$rps" -v b="$bare_rps" 'BEGIN {printf "%.2f", s / b}')
    warm_ratio=$(awk -v s="$warm_rps" -v b="$bare_rps" 'BEGIN {printf "%.2f", s / b}')
    results+=("$(printf '| %-8s | %5s | %6s | %7s / %-7s | %6s | %7s / %-7s | %5s | %6s | %7s / %-7s | **%s** | %7s | %5s | %7s |' \
      "$strategy" "$count" "$bare_rps" "$bare_p50" "$bare_p99" "$rps" "$p50" "$p99" "$ratio" \
      "$warm_rps" "$warm_p50" "$warm_p99" "$warm_ratio" "$cpr" "$rpr" "$bare_cpr")")
    say "${results[-1]}"
  done
done

echo
echo "GET /api/notes?limit=20, every request another tenant, wrk -t2 -c$CONNECTIONS -d$DURATION, $(nproc) cores shared by wrk, the server and PostgreSQL; generated defaults, except sslmode=disable for both"
echo "scoped: just after start (2 s warm-up, as bare); warmed: after $WARM s more of the same load (conns/req and re-scopes/req measured there)"
echo "| strategy | tenants | bare req/s | bare p50 / p99 | scoped req/s | scoped p50 / p99 | ratio | warmed req/s | warmed p50 / p99 | warmed ratio | conns/req scoped | re-scopes/req | conns/req bare |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
