#!/usr/bin/env bash
# Benchmark: a tenant-scoped read against the same read with no tenancy, in the same run.
# Generates the default service (release build), creates TENANTS tenants with ROWS notes
# each, then alternates the two servers under wrk (-t2 -c32 by default) ROUNDS times and
# reports requests/s and the scoped/bare ratio. The target is >= 0.90.
#
#   bash ci/bench/scoped-read.sh                 # defaults: 10 tenants, 1000 rows, 2 rounds, 10 s
#   DURATION=20s ROUNDS=3 bash ci/bench/scoped-read.sh
#
# It reports numbers; it does not pass or fail on them.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

TENANTS=${TENANTS:-10} ROWS=${ROWS:-1000} ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32} PORT=${PORT:-8799}
# Connections to PostgreSQL: bare pool = POOL; scoped = POOL per tenant pool... capped at TENANTS*TENANT_POOL.
BARE_POOL=${BARE_POOL:-10} TENANT_POOL=${TENANT_POOL:-1}

ensure_cargo_generate
ensure_postgres
command -v wrk >/dev/null 2>&1 || die "wrk is missing (apt-get install wrk)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/actix-tenancy/target}"

project=$(generate "$root" acme-api)
trap 'rm -rf "$(dirname "$project")"' EXIT
mkdir -p "$project/examples"
cp "$root/ci/bench/bench_server.rs" "$project/examples/bench_server.rs"
say "building the benchmark server (release)"
(cd "$project" && cargo build --quiet --release --example bench_server && cargo build --quiet --release)
server="$CARGO_TARGET_DIR/release/examples/bench_server"
cli="$CARGO_TARGET_DIR/release/acme-api"

database=actix_tenancy_bench
psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
export TENANCY_DATABASE_URL="${TENANCY_TEST_DATABASE_URL%/*}/$database"
export TENANCY_HOST=127.0.0.1 TENANCY_PORT=$PORT TENANCY_WORKERS=2 RUST_LOG=warn TENANTS
say "creating $TENANTS tenants with $ROWS notes each"
"$cli" migrate >/dev/null
for i in $(seq 0 $((TENANTS - 1))); do
  "$cli" tenant create "t$i" --name "Tenant $i" >/dev/null
  psql "$TENANCY_DATABASE_URL" -qc "INSERT INTO tenant_t$i.notes (title) SELECT 'note ' || g FROM generate_series(1, $ROWS) g"
done
psql "$TENANCY_DATABASE_URL" -qc "VACUUM ANALYZE"

run() { # mode -> requests/s
  local mode=$1 pid rps
  if [ "$mode" = bare ]; then
    BENCH_MODE=bare TENANCY_CONTROL_POOL_SIZE=$BARE_POOL "$server" & pid=$!
  else
    BENCH_MODE=scoped TENANCY_DATABASE_POOL_SIZE=$TENANT_POOL TENANCY_DATABASE_MAX_OVERFLOW=0 \
      TENANCY_MAX_TOTAL_CONNECTIONS=$((TENANTS * TENANT_POOL)) "$server" & pid=$!
  fi
  for _ in $(seq 1 50); do curl -fs -o /dev/null -H 'X-Tenant-ID: t0' "http://127.0.0.1:$PORT/api/notes" && break; sleep 0.2; done
  wrk -t2 -c"$CONNECTIONS" -d2s -s "$root/ci/bench/rotate.lua" "http://127.0.0.1:$PORT" >/dev/null # warm-up
  rps=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s "$root/ci/bench/rotate.lua" "http://127.0.0.1:$PORT" \
    | tee "/tmp/actix-tenancy-bench-$mode.txt" | awk '/Requests\/sec/ {print $2}')
  grep -qE 'Non-2xx|Socket errors' "/tmp/actix-tenancy-bench-$mode.txt" && say "$mode: $(grep -E 'Non-2xx|Socket errors' "/tmp/actix-tenancy-bench-$mode.txt")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$rps"
}

echo
echo "GET /api/notes?limit=20, $TENANTS tenants x $ROWS rows, wrk -t2 -c$CONNECTIONS -d$DURATION, $(nproc) cores shared"
printf '%-6s %12s %12s %8s\n' round bare scoped ratio
for round in $(seq 1 "$ROUNDS"); do
  bare=$(run bare)
  scoped=$(run scoped)
  printf '%-6s %12s %12s %8s\n' "$round" "$bare" "$scoped" "$(awk -v s="$scoped" -v b="$bare" 'BEGIN {printf "%.2f", s / b}')"
done
psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"
