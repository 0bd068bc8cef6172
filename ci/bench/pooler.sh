#!/usr/bin/env bash
# The service behind PgBouncer in transaction mode (Debian's package, as managed PostgreSQL
# offers it), release builds, for each strategy. The service runs with its generated
# defaults: no pool, cache or timeout setting is changed. What it is given besides are its
# URLs (the application role's through PgBouncer, with sslmode=disable as in
# ci/bench/connections.sh) and TENANCY_POOLER=transaction, the mode under test, which a
# service behind such a pooler must be given. CHECK_POOL and BENCH_POOL_SIZE size
# PgBouncer, not the service.
#
#   1. refusal: `serve` in the default (session) mode behind the pooler must refuse to
#      start, naming TENANCY_POOLER=transaction;
#   2. check: `serve` with TENANCY_POOLER=transaction under CHECK_CLIENTS clients (16) over
#      CHECK_TENANTS tenants (20) for CHECK_SECONDS (20 s), every row of every answer
#      checked against its tenant (ci/bench/load_check.rs), with PgBouncer holding
#      CHECK_POOL (4) server connections; then a second replica, and how long it takes to
#      answer 403 once the first one's CLI has suspended a tenant;
#   3. benchmark: for COUNTS tenants (10 1000), every request another tenant, `wrk -t2
#      -c32`, the bare read through the same PgBouncer (ci/bench/bench_server.rs: the
#      service's pool, connection set-up and statement cache, no tenancy; one transaction
#      per read, the least diesel's prepared statements need behind this pooler) and the
#      scoped read of the service in transaction mode, both running, each warmed by WARM
#      (30) s of the same load (with schema per tenant, each server session meets every
#      tenant: its catalog caches warm up), then measured for DURATION in ROUNDS (3) rounds
#      taking turns, so that a slower spell of a shared machine falls on both; the median
#      requests/s of each and scoped / bare.
#
#   bash ci/bench/pooler.sh
#   STRATEGIES=rls COUNTS=10 DURATION=20s bash ci/bench/pooler.sh
#
# It reports numbers (and the refusal's message); it does not pass or fail.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

STRATEGIES=${STRATEGIES:-schema rls}
COUNTS=${COUNTS:-10 1000}
DURATION=${DURATION:-10s} CONNECTIONS=${CONNECTIONS:-32} PORT=${PORT:-8799} WARM=${WARM:-30} ROUNDS=${ROUNDS:-3}
CHECK_CLIENTS=${CHECK_CLIENTS:-16} CHECK_TENANTS=${CHECK_TENANTS:-20} CHECK_SECONDS=${CHECK_SECONDS:-20}
CHECK_POOL=${CHECK_POOL:-4} BENCH_POOL_SIZE=${BENCH_POOL_SIZE:-20} BARE_POOL=${BARE_POOL:-40}

ensure_cargo_generate
ensure_postgres
ensure_pgbouncer
command -v wrk >/dev/null 2>&1 || die "wrk is missing (apt-get install wrk)"
use_shared_target_dir
server_url=${TENANCY_TEST_DATABASE_URL%/*}
server_hostport=${server_url#*@}
database=actix_tenancy_pooler_bench
owner_url="$server_url/$database"
sql() { psql "$server_url/${2:-$database}" -qtAX -v ON_ERROR_STOP=1 -c "$1"; }

pgb_dir=$(mktemp -d /tmp/actix-tenancy-pgbouncer.XXXXXX)
pgb_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pgb_run=()
if [ "$(id -u)" = 0 ]; then pgb_run=(runuser -u postgres --); fi

# start_pgbouncer POOL_SIZE: PgBouncer in transaction mode on $pgb_port, in front of the
# test server; roles log in with their passwords, checked against pg_shadow.
start_pgbouncer() {
  stop_pgbouncer
  printf '"postgres" ""\n' >"$pgb_dir/users.txt"
  cat >"$pgb_dir/pgbouncer.ini" <<EOF
[databases]
* = host=${server_hostport%:*} port=${server_hostport##*:}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgb_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $pgb_dir/users.txt
auth_user = postgres
auth_query = SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = \$1
pool_mode = transaction
default_pool_size = $1
max_client_conn = 2000
ignore_startup_parameters = extra_float_digits,options,statement_timeout,search_path
logfile = $pgb_dir/pgbouncer.log
pidfile = $pgb_dir/pgbouncer.pid
EOF
  [ "$(id -u)" != 0 ] || chown -R postgres "$pgb_dir"
  "${pgb_run[@]}" "$TENANCY_TEST_PGBOUNCER" -d "$pgb_dir/pgbouncer.ini"
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$pgb_port") 2>/dev/null && return; sleep 0.1; done
  die "PgBouncer did not start: $(tail -n 5 "$pgb_dir/pgbouncer.log")"
}
stop_pgbouncer() {
  if [ -s "$pgb_dir/pgbouncer.pid" ]; then
    kill "$(cat "$pgb_dir/pgbouncer.pid")" 2>/dev/null || true
    sleep 0.3
  fi
}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  stop_pgbouncer
  rm -rf "$pgb_dir"
  sql "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres >/dev/null 2>&1 || true
  sql "DROP ROLE IF EXISTS bench_app" postgres >/dev/null 2>&1 || true
  sql "DROP ROLE IF EXISTS bench_bare" postgres >/dev/null 2>&1 || true
}
trap cleanup EXIT

wait_http() { # port
  for _ in $(seq 1 150); do
    curl -fs -o /dev/null -H 'X-Tenant-ID: t0' "http://127.0.0.1:$1/api/notes" && return
    sleep 0.2
  done
  die "the server on port $1 did not answer"
}

# wrk on PORT, every request another of $TENANTS tenants, for SECONDS (WARM: nothing kept)
# -> "req/s p50 p99 non-2xx"
wrk_on() { # port seconds
  local out=/tmp/actix-tenancy-pooler-bench.txt
  wrk -t2 -c"$CONNECTIONS" -d"$2" --latency -s "$root/ci/bench/rotate.lua" "http://127.0.0.1:$1" >"$out"
  awk '/Requests\/sec/ {rps = $2} $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2}
    /Non-2xx/ {bad = $NF} END {printf "%d %s %s %d\n", rps, p50, p99, bad}' "$out"
}

# The median of "req/s ..." lines, by req/s.
median() { sort -n | awk '{line[NR] = $0} END {print line[int((NR + 1) / 2)]}'; }

# seed STRATEGY COUNT ROWS: the database, both roles, COUNT tenants with ROWS notes each
# titled "tN note ...", and the bare schema with the same rows.
seed() {
  sql "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres
  sql "CREATE DATABASE $database" postgres
  sql "DROP ROLE IF EXISTS bench_app; DROP ROLE IF EXISTS bench_bare" postgres
  sql "CREATE ROLE bench_bare LOGIN PASSWORD 'bench_bare_password'" postgres
  "$cli" migrate --create-app-role >/dev/null
  for i in $(seq 0 $(($2 - 1))); do "$cli" tenant create "t$i" --name "Tenant $i" >/dev/null; done
  case $1 in
    schema) sql "DO \$\$ DECLARE s text; BEGIN
               FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_t%' LOOP
                 EXECUTE format('INSERT INTO %I.notes (title) SELECT %L || '' note '' || g FROM generate_series(1, $3) g', s, substr(s, 8));
               END LOOP; END \$\$" ;;
    rls) sql "INSERT INTO tenancy_data.notes (tenant_id, title)
              SELECT t.id, t.identifier || ' note ' || g FROM tenancy.tenants t, generate_series(1, $3) g" ;;
    *) die "pooler.sh measures schema and rls" ;;
  esac
  sql "CREATE SCHEMA bench_bare;
       CREATE TABLE bench_bare.notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
         title text NOT NULL, body text NOT NULL DEFAULT '',
         created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
       INSERT INTO bench_bare.notes (title) SELECT 'note ' || g FROM generate_series(1, $3) g;
       GRANT USAGE ON SCHEMA bench_bare TO bench_bare; GRANT SELECT ON bench_bare.notes TO bench_bare;
       ALTER ROLE bench_bare IN DATABASE $database SET search_path = bench_bare"
  sql "VACUUM ANALYZE" >/dev/null
}

# serve_pooled VAR=VALUE...: `serve` in the background through PgBouncer, with its
# generated defaults and the one setting a service behind a transaction pooler must have
# (TENANCY_POOLER=transaction: the deployment's mode, not a tuning), plus VAR=VALUE.
serve_pooled() {
  env TENANCY_POOLER=transaction TENANCY_DATABASE_URL="$pooled_app" "$@" "$cli" serve >/dev/null 2>&1 &
}

pooled() { # a direct URL -> the same through PgBouncer
  local url=$1
  echo "${url/@${server_hostport}/@127.0.0.1:$pgb_port}"
}

report=()
for strategy in $STRATEGIES; do
  project=$(generate "$root" acme-api "isolation=$strategy")
  mkdir -p "$project/examples"
  cp "$root/ci/bench/bench_server.rs" "$root/ci/bench/load_check.rs" "$project/examples/"
  say "$strategy: building the service, the bare server and the checker (release)"
  (cd "$project" && cargo build --locked --quiet --release --bin acme-api --example bench_server --example load_check)
  cli="$CARGO_TARGET_DIR/release/acme-api"
  bare_server="$CARGO_TARGET_DIR/release/examples/bench_server"
  checker="$CARGO_TARGET_DIR/release/examples/load_check"
  app_url="${owner_url/:\/\/postgres@/://bench_app:bench_app_password@}"
  bare_url="${owner_url/:\/\/postgres@/://bench_bare:bench_bare_password@}"
  export TENANCY_DATABASE_URL="$app_url?sslmode=disable" TENANCY_MIGRATION_DATABASE_URL=$owner_url \
    TENANCY_HOST=127.0.0.1 RUST_LOG=warn

  # 1 and 2: the load of the issue, every row checked.
  seed "$strategy" "$CHECK_TENANTS" 100
  start_pgbouncer "$CHECK_POOL"
  pooled_app="$(pooled "$app_url")?sslmode=disable"
  code=0
  refusal=$(TENANCY_DATABASE_URL=$pooled_app TENANCY_PORT=$PORT timeout 30 "$cli" serve 2>&1) || code=$?
  message=$(grep -oE 'TENANCY_DATABASE_URL leads to a pooler[^"]*' <<<"$refusal" | head -n 1 | cut -c1-200)
  case $code in
    0 | 124) refused="no: it served (exit $code)" ;;
    *) refused="yes (exit $code): $message..." ;;
  esac
  report+=("$strategy: session mode behind the pooler, refused to start: $refused")
  say "${report[-1]}"
  serve_pooled TENANCY_PORT="$PORT"
  pids+=($!)
  wait_http "$PORT"
  checked=$(CHECK_ADDRESS="127.0.0.1:$PORT" CHECK_TENANTS=$CHECK_TENANTS CHECK_CLIENTS=$CHECK_CLIENTS \
    CHECK_SECONDS=$CHECK_SECONDS "$checker")
  report+=("$strategy: transaction mode, $CHECK_CLIENTS clients over $CHECK_TENANTS tenants for $CHECK_SECONDS s, PgBouncer with $CHECK_POOL server connections: $checked")
  say "${report[-1]}"
  # A second replica, without a URL to listen on (it polls), and the time it takes to
  # refuse a tenant the first one's CLI suspended.
  serve_pooled TENANCY_MIGRATION_DATABASE_URL= TENANCY_PORT="$((PORT + 1))"
  pids+=($!)
  wait_http $((PORT + 1))
  agreed=$(python3 - "$cli" "$PORT" $((PORT + 1)) <<'EOF'
import subprocess, sys, time, urllib.request, urllib.error
cli, ports = sys.argv[1], sys.argv[2:]
def status(port):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/notes", headers={"X-Tenant-ID": "t3"})
    try:
        return urllib.request.urlopen(request).status
    except urllib.error.HTTPError as error:
        return error.code
assert all(status(p) == 200 for p in ports)
subprocess.run([cli, "tenant", "suspend", "t3"], check=True, capture_output=True)
started = time.monotonic()
took = {}
while len(took) < len(ports) and time.monotonic() - started < 10:
    for p in ports:
        if p not in took and status(p) == 403:
            took[p] = time.monotonic() - started
    time.sleep(0.01)
subprocess.run([cli, "tenant", "activate", "t3"], check=True, capture_output=True)
print(", ".join(f"{'listening' if i == 0 else 'polling'} replica {took.get(p, float('inf')) * 1000:.0f} ms" for i, p in enumerate(ports)))
EOF
)
  report+=("$strategy: a suspension reached the listening replica and the polling one in: $agreed")
  say "${report[-1]}"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  pids=()

  # 3: the benchmark.
  start_pgbouncer "$BENCH_POOL_SIZE"
  for count in $COUNTS; do
    rows=$(if [ "$count" -le 10 ]; then echo 1000; else echo 100; fi)
    say "$strategy: $count tenants with $rows notes each"
    seed "$strategy" "$count" "$rows"
    export TENANTS=$count
    bare_port=$PORT scoped_port=$((PORT + 2))
    BENCH_DATABASE_URL="$(pooled "$bare_url")?sslmode=disable" BENCH_POOLER=transaction \
      BENCH_POOL=$BARE_POOL BENCH_PORT=$bare_port "$bare_server" &
    pids+=($!)
    serve_pooled TENANCY_PORT="$scoped_port"
    pids+=($!)
    wait_http "$bare_port"
    wait_http "$scoped_port"
    wrk_on "$bare_port" "${WARM}s" >/dev/null
    wrk_on "$scoped_port" "${WARM}s" >/dev/null
    # Taking turns, so that a slower spell of the machine falls on both.
    bare_runs=() scoped_runs=() ratios=()
    for _ in $(seq 1 "$ROUNDS"); do
      bare_runs+=("$(wrk_on "$bare_port" "$DURATION")")
      scoped_runs+=("$(wrk_on "$scoped_port" "$DURATION")")
      ratios+=("$(awk -v s="${scoped_runs[-1]%% *}" -v b="${bare_runs[-1]%% *}" 'BEGIN {printf "%.2f", s / b}')")
    done
    for pid in "${pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
    pids=()
    read -r bare_rps bare_p50 bare_p99 bare_bad < <(printf '%s\n' "${bare_runs[@]}" | median)
    read -r rps p50 p99 bad < <(printf '%s\n' "${scoped_runs[@]}" | median)
    say "$strategy, $count tenants, each round's scoped / bare: ${ratios[*]}"
    ratio=$(awk -v s="$rps" -v b="$bare_rps" 'BEGIN {printf "%.2f", s / b}')
    report+=("$(printf '| %s | %s | %s | %s / %s | %s | %s / %s | **%s** (%s) | %s / %s |' \
      "$strategy" "$count" "$bare_rps" "$bare_p50" "$bare_p99" "$rps" "$p50" "$p99" "$ratio" \
      "$(tr ' ' '\n' <<<"${ratios[*]}" | sort -n | sed -n '1p;$p' | paste -sd '-')" "$bare_bad" "$bad")")
    say "${report[-1]}"
  done
  stop_pgbouncer
done

echo
echo "PgBouncer $("$TENANCY_TEST_PGBOUNCER" --version | head -n 1 | awk '{print $2}'), transaction mode; $(nproc) cores shared by wrk, the servers, PgBouncer and PostgreSQL"
echo "benchmark: GET /api/notes?limit=20, every request another tenant, wrk -t2 -c$CONNECTIONS, each server warmed $WARM s, then $ROUNDS rounds of $DURATION each taking turns (medians; the rounds' lowest-highest ratio in brackets), PgBouncer default_pool_size $BENCH_POOL_SIZE; the service: generated defaults, no setting tuned; given its URLs (sslmode=disable) and TENANCY_POOLER=transaction, which a service behind a transaction pooler requires"
printf '%s\n' "${report[@]}" | grep -v '^|'
echo "| strategy | tenants | bare req/s | bare p50 / p99 | scoped req/s | scoped p50 / p99 | scoped / bare (rounds) | non-2xx bare / scoped |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${report[@]}" | grep '^|' || true
