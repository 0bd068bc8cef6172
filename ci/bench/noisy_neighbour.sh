#!/usr/bin/env bash
# Benchmark: one tenant's neighbours against its latency. The generated service (default
# combination: schema, header), release build, generated defaults (no pool or timeout
# setting changed; given its URLs with sslmode=disable, as the other benchmarks). A quiet
# tenant sends RATE (50) requests/s of GET /api/notes for SECONDS (10) on one keep-alive
# connection (ci/bench/neighbour.py), alone and then beside each of:
#   flood       28 keep-alive clients of cheap reads from one other tenant (wrk);
#   cpu only    as many requests a second as that flood sent, on /health/live (no tenant,
#               no database): the control that shows what sharing the machine's 2 cores
#               alone costs (wrk paced by a Lua delay(), connections to match the rate);
#   large writes two other tenants, 14 keep-alive clients each, writing notes of 99 kB
#               (POST /api/notes, wrk): requests that hold their connections longer;
#   slow bodies two other tenants, SLOW (25) sockets each, announcing a 100 kB note and
#               sending a byte a second (the service reads bodies whole before a handler
#               takes a connection, within TENANCY_REQUEST_BODY_TIMEOUT, 10 s).
#   large writes, limited   the same writers, each held to WRITE_LIMIT (50) requests a second
#               by its own rate limit (`tenant limits --rate-limit`): tuned, labelled so.
# For each: the quiet tenant's p50 and p99 (from when each request was due), its p99 over
# its p99 alone (the target is 2 at most), its answers that were not 2xx, and how many
# requests waited in line for a database connection meanwhile: of every tenant
# (`tenancy_pool_waits_total`) and of the quiet tenant (`tenant_connection_waits_total`:
# the one setting changed from the defaults is TENANCY_METRICS_TENANT_LABELS=true).
#
#   bash ci/bench/noisy_neighbour.sh
#   SECONDS_EACH=20 bash ci/bench/noisy_neighbour.sh
#
# It reports numbers; it does not pass or fail.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

SECONDS_EACH=${SECONDS_EACH:-10} RATE=${RATE:-50} SLOW=${SLOW:-25} PORT=${PORT:-8799}
WRITE_LIMIT=${WRITE_LIMIT:-50}

ensure_cargo_generate
ensure_postgres
command -v wrk >/dev/null 2>&1 || die "wrk is missing (apt-get install wrk)"
use_shared_target_dir
server_url=${TENANCY_TEST_DATABASE_URL%/*}
database=actix_tenancy_neighbours
owner_url="$server_url/$database"
app_url="${owner_url/:\/\/postgres@/://bench_app:bench_app_password@}"
sql() { psql "$server_url/${2:-$database}" -qtAX -v ON_ERROR_STOP=1 -c "$1"; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  sql "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres >/dev/null 2>&1 || true
  sql "DROP ROLE IF EXISTS bench_app" postgres >/dev/null 2>&1 || true
}
trap cleanup EXIT

project=$(generate "$root" acme-api)
say "building the service (release)"
(cd "$project" && cargo build --locked --quiet --release --bin acme-api)
cli="$CARGO_TARGET_DIR/release/acme-api"
sql "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres
sql "CREATE DATABASE $database" postgres
sql "DROP ROLE IF EXISTS bench_app" postgres
export TENANCY_DATABASE_URL="$app_url?sslmode=disable" TENANCY_MIGRATION_DATABASE_URL=$owner_url \
  TENANCY_HOST=127.0.0.1 TENANCY_PORT=$PORT RUST_LOG=warn TENANCY_METRICS_TENANT_LABELS=true
"$cli" migrate --create-app-role >/dev/null
for tenant in quiet flood write_a write_b slow_a slow_b; do "$cli" tenant create "$tenant" --name "$tenant" >/dev/null; done
sql "DO \$\$ DECLARE s text; BEGIN
       FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_%' LOOP
         EXECUTE format('INSERT INTO %I.notes (title) SELECT ''note '' || g FROM generate_series(1, 1000) g', s);
       END LOOP; END \$\$"
sql "VACUUM ANALYZE" >/dev/null
"$cli" serve >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs -o /dev/null -H 'X-Tenant-ID: quiet' "http://127.0.0.1:$PORT/api/notes" && break
  sleep 0.2
done

quiet() { python3 "$root/ci/bench/neighbour.py" quiet "$PORT" quiet "$SECONDS_EACH" "$RATE"; }
flood_out=$(mktemp)
flood() { # path [connections [lua]]: keep-alive clients (28) for the quiet tenant's time and a little more
  local script=()
  [ -z "${3:-}" ] || script=(-s "$3")
  wrk -t2 -c"${2:-28}" -d"$((SECONDS_EACH + 3))s" "${script[@]}" -H 'X-Tenant-ID: flood' \
    "http://127.0.0.1:$PORT$1" >"$flood_out" &
  pids+=($!)
  sleep 2
}
flood_rate() { awk '/Requests\/sec/ {printf "%d", $2}' "$flood_out"; }

waits() { # requests that waited in line for a tenant connection since start: all, quiet's
  curl -fs "http://127.0.0.1:$PORT/metrics" | awk '
    /^tenancy_pool_waits_total\{pool="tenant"\}/ {all = $2}
    /^tenant_connection_waits_total\{tenant="quiet"\}/ {quiet = $2}
    END {printf "%d %d\n", all, quiet}'
}
since() { # before now: "all quiet" waits between two readings
  local before now
  read -r -a before <<<"$1"
  read -r -a now <<<"$2"
  echo "$((now[0] - before[0])) | $((now[1] - before[1]))"
}

# Warm-up, then the quiet tenant alone.
quiet >/dev/null
waited=$(waits)
read -r alone_p50 alone_p99 alone_bad requests < <(quiet)
rows=("| alone | $alone_p50 ms | $alone_p99 ms | 1.0 | $alone_bad | $(since "$waited" "$(waits)") |")
row() { # name p50 p99 bad (waits counted since the last row)
  local now
  now=$(waits)
  rows+=("| $1 | $2 ms | $3 ms | $(awk -v a="$3" -v b="$alone_p99" 'BEGIN {printf "%.1f", a / b}') | $4 | $(since "$waited" "$now") |")
  waited=$now
  say "${rows[-1]}"
}

waited=$(waits)
flood /api/notes
read -r p50 p99 bad _ < <(quiet)
wait "${pids[-1]}" 2>/dev/null || true
row "flood of cheap reads (another tenant, 28 clients)" "$p50" "$p99" "$bad"
rates="the flood of reads: $(flood_rate) requests/s"

# The control: the flood's request rate, on a route that touches no tenant. Each
# connection pauses PAUSE_MS after every answer; enough connections for the rate.
paced=$(mktemp --suffix=.lua)
cat >"$paced" <<'LUA'
local pause = tonumber(os.getenv("PAUSE_MS"))
function delay() return pause end
LUA
pause_ms=2
control_connections=$(awk -v r="$(flood_rate)" -v p="$pause_ms" 'BEGIN {c = int(r * p / 1000 + 0.5); print (c < 2 ? 2 : c)}')
waited=$(waits)
export PAUSE_MS=$pause_ms
flood /health/live "$control_connections" "$paced"
read -r p50 p99 bad _ < <(quiet)
wait "${pids[-1]}" 2>/dev/null || true
row "cpu only (the flood's rate on /health/live)" "$p50" "$p99" "$bad"
rates+="; the control: $(flood_rate) requests/s ($control_connections connections, ${pause_ms} ms apart)"
rm -f "$paced"

large=$(mktemp --suffix=.lua)
cat >"$large" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Tenant-ID"] = os.getenv("WRITER")
local words = {}
for i = 1, 12000 do words[i] = string.format("%08x", (i * 2654435761) % 4294967296) end
wrk.body = '{"title":"large","body":"' .. table.concat(words, " "):sub(1, 99000) .. '"}'
LUA
writers() { # name: the two writers beside the quiet tenant; what they got goes to $written
  for writer in write_a write_b; do
    WRITER=$writer wrk -t1 -c14 -d"$((SECONDS_EACH + 3))s" -s "$large" "http://127.0.0.1:$PORT/api/notes" >"$large.$writer" &
    pids+=($!)
  done
  waited=$(waits)
  sleep 2
  read -r p50 p99 bad _ < <(quiet)
  wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
  row "$1" "$p50" "$p99" "$bad"
  written+="$1: $(for writer in write_a write_b; do awk -v w="$writer" '/Requests\/sec/ {printf "%s %s req/s", w, $2} /Non-2xx/ {printf " (%s not 2xx)", $NF} END {printf "; "}' "$large.$writer"; done)"
}
written=
writers "large writes (2 tenants x 14 clients, 99 kB notes)"
for writer in write_a write_b; do
  "$cli" tenant limits "$writer" --rate-limit "$WRITE_LIMIT" >/dev/null
done
sleep 1 # every replica hears of it within a second
writers "large writes, each writer limited to $WRITE_LIMIT/s (tuned)"
rm -f "$large" "$large".write_*

slow_out=$(mktemp)
python3 "$root/ci/bench/neighbour.py" trickle "$PORT" slow_a "$SLOW" "$((SECONDS_EACH + 15))" >"$slow_out.a" &
slow_a=$!
python3 "$root/ci/bench/neighbour.py" trickle "$PORT" slow_b "$SLOW" "$((SECONDS_EACH + 15))" >"$slow_out.b" &
slow_b=$!
waited=$(waits)
sleep 1
read -r p50 p99 bad _ < <(quiet)
wait "$slow_a" "$slow_b"
row "slow bodies (2 tenants x $SLOW sockets, a byte a second)" "$p50" "$p99" "$bad"
slow_answers="slow_a: $(cat "$slow_out.a"); slow_b: $(cat "$slow_out.b")"
rm -f "$slow_out" "$slow_out.a" "$slow_out.b" "$flood_out"

echo
echo "the quiet tenant: $RATE requests/s of GET /api/notes?limit=20 for $SECONDS_EACH s ($requests requests) on one keep-alive connection; release build, generated defaults (schema, header); $(nproc) cores shared by the load, the service and PostgreSQL"
echo "| neighbours | quiet p50 | quiet p99 | p99 / alone | quiet non-2xx | connection waits (all) | (quiet) |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "what the floods sent: $rates"
echo "what the writers got: $written"
echo "what the slow clients were answered: $slow_answers"
