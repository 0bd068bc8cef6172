#!/usr/bin/env bash
# The fuzzer no one here wrote: schemathesis reads a generated service's own OpenAPI
# document (GET /openapi.json) and sends what it describes, and what it does not, to the
# running service. Two tenants, acme and globex, are created with notes; the tenant API is
# fuzzed as acme (by its header, subdomain, path or token: whatever the project resolves
# by), then the admin API with the admin token, on tenants of its own (it suspends and
# destroys what it finds). It passes when schemathesis' checks all pass (no 5xx, every
# answer's status, headers and body as documented, every error problem+json, invalid
# input refused, valid input accepted, 405 with Allow) and no answer acme got holds
# anything of globex's (its notes' ids and titles, its tenant id) while globex's notes are
# exactly those it was given.
#
#   bash ci/fuzz.sh PROJECT key=value...   # a generated project and its cargo-generate
#                                          # answers (resolution=..., chain=...)
#
# FUZZ_TIME: seconds for each of the two runs (default 30); FUZZ_SEED: schemathesis'
# seed (default random, printed: the same seed replays the same requests). On failure
# the logs, configurations and HAR files of every request and answer stay in a temporary
# folder it names.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

project=${1:?usage: bash ci/fuzz.sh PROJECT key=value...}
shift
resolution=header chain=
for kv in "$@"; do
  case "$kv" in
    resolution=*) resolution=${kv#*=} ;;
    chain=*) chain=${kv#*=} ;;
  esac
done
# A chain is fuzzed through its first resolver; the others are covered by their own runs.
[ "$resolution" = chain ] && resolution=${chain%%,*}

ensure_postgres
ensure_redis
ensure_api_tools
use_shared_target_dir
time_per_run=${FUZZ_TIME:-30}
seed=${FUZZ_SEED:-$((RANDOM * 32768 + RANDOM))}

bin=$(service_binary "$project") || die "the project does not build"
# Outside the project: its files hold this run's tokens (and the project's own checks scan
# every file in it for secrets).
work=$(mktemp -d --suffix=-fuzz)

# A database, an app role and a tenant-database prefix of this run's own.
tag=$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n' | cut -c1-5)
database="fuzz_$tag" app_role="fuzz_${tag}_app" prefix="f${tag}_"
base="${TENANCY_TEST_DATABASE_URL%/*}"
server_address=${base#*://}
server_address=${server_address#*@}
secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
app_password=$(secret)
export TENANCY_MIGRATION_DATABASE_URL="$base/$database"
export TENANCY_DATABASE_URL="postgres://$app_role:$app_password@$server_address/$database"
export TENANCY_HOST=127.0.0.1 TENANCY_PORT=$port
TENANCY_ADMIN_TOKEN=$(secret) TENANCY_METRICS_TOKEN=$(secret) TENANCY_JWT_SECRET=$(secret)
export TENANCY_ADMIN_TOKEN TENANCY_METRICS_TOKEN TENANCY_JWT_SECRET
export TENANCY_DOMAIN_SUFFIX=.fuzz.test TENANCY_TENANT_DATABASE_PREFIX=$prefix
export TENANCY_REDIS_URL="${TENANCY_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export RUST_LOG=warn TENANCY_API_DOCS=true

server_pid=
# shellcheck disable=SC2329 # called by the EXIT trap
clean_up() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  local extra
  extra=$(psql "$TENANCY_TEST_DATABASE_URL" -tAc "SELECT datname FROM pg_database WHERE left(datname, ${#prefix}) = '$prefix'")
  for db in $extra "$database"; do
    psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" 2>/dev/null
  done
  psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP ROLE IF EXISTS \"$app_role\"" 2>/dev/null
}
trap clean_up EXIT
psql "$TENANCY_TEST_DATABASE_URL" -qc "CREATE DATABASE $database" || die "could not create $database"

# How a request names a tenant: for curl (api) and for schemathesis (tenant_config).
jwt() { # tenant: an HS256 token with tenant_id and exp, signed with TENANCY_JWT_SECRET
  python3 - "$1" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"tenant_id": sys.argv[1], "exp": int(time.time()) + 3600}).encode())
mac = hmac.new(os.environ["TENANCY_JWT_SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256)
print(f"{head}.{body}.{b64(mac.digest())}")
PY
}
tenant_api() { # tenant: the base of its API
  if [ "$resolution" = path ]; then echo "$url/t/$1/api"; else echo "$url/api"; fi
}
tenant_config() { # tenant: schemathesis settings that name it
  case "$resolution" in
    header) printf 'headers = { "X-Tenant-ID" = "%s" }\n' "$1" ;;
    subdomain) printf 'headers = { Host = "%s%s" }\n' "$1" "$TENANCY_DOMAIN_SUFFIX" ;;
    jwt) printf '[auth.openapi.tenant_token]\nbearer = "%s"\n' "$(jwt "$1")" ;;
    path) ;; # in the document: see fuzzed_document
  esac
}
api() { # tenant, method, path under /api, [json body]: prints the answer's body
  local tenant=$1 method=$2 path=$3 body=${4:-} args=()
  case "$resolution" in
    header) args=(-H "X-Tenant-ID: $tenant") ;;
    subdomain) args=(-H "Host: $tenant$TENANCY_DOMAIN_SUFFIX") ;;
    jwt) args=(-H "Authorization: Bearer $(jwt "$tenant")") ;;
  esac
  [ -n "$body" ] && args+=(-H "content-type: application/json" --data "$body")
  curl -fsS -X "$method" "$(tenant_api "$tenant")$path" "${args[@]}"
}

say "fuzzing $project (resolution=$resolution, seed $seed, ${time_per_run}s per run)"
"$bin" migrate --create-app-role >"$work/migrate.log" 2>&1 || { cat "$work/migrate.log" >&2; die "migrate failed"; }
for tenant in acme globex; do
  "$bin" tenant create "$tenant" --name "${tenant^}" >>"$work/migrate.log" 2>&1 ||
    { cat "$work/migrate.log" >&2; die "could not create tenant $tenant"; }
done
"$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do curl -fs "$url/health/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "$url/health/ready" >/dev/null || { tail -n 20 "$work/server.log" >&2; die "the service did not become ready"; }

# Notes of each tenant: acme's give the fuzzer rows to read, globex's are what acme's
# answers may never contain.
for i in 1 2 3; do
  if ! api acme POST /notes "{\"title\":\"acme note $i\",\"body\":\"acme's own\"}" >/dev/null ||
    ! api globex POST /notes "{\"title\":\"globex secret $tag $i\",\"body\":\"globex-only-$tag\"}" >/dev/null; then
    die "could not seed the notes"
  fi
done
if ! psql "$TENANCY_MIGRATION_DATABASE_URL" -tAc "SELECT id FROM tenancy.tenants WHERE identifier = 'globex'" \
  >"$work/globex-id" || ! api globex GET '/notes?limit=100' >"$work/globex-notes.json"; then
  die "could not read globex's seed"
fi

# The document schemathesis reads: the service's own, except for the parameter that names
# the tenant, which schemathesis must not vary: with path resolution acme's paths are
# written out (`/t/acme/api/notes` for `/t/{tenant}/api/notes`, without the `tenant`
# parameter); with header resolution the `X-Tenant-ID` parameter is left out and the
# configuration sends acme's. Pinning the parameter in the configuration instead makes
# schemathesis 4.32.5 report its own invalid values, replaced by acme as asked, as invalid
# data the service accepted.
curl -fsS "$url/openapi.json" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
pinned = {"path": ("path", "tenant"), "header": ("header", "X-Tenant-ID")}.get(sys.argv[1])
if sys.argv[1] == "path":
    doc["paths"] = {path.replace("/t/{tenant}/", "/t/acme/"): item for path, item in doc["paths"].items()}
for item in doc["paths"].values():
    for operation in item.values():
        if pinned and isinstance(operation, dict) and "parameters" in operation:
            operation["parameters"] = [p for p in operation["parameters"]
                                       if (p.get("in"), p.get("name")) != pinned]
json.dump(doc, sys.stdout)
' "$resolution" >"$work/openapi.json" || die "could not read the service's OpenAPI document"

# One schemathesis run: name, configuration, arguments.
fuzz() {
  local label=$1 config=$2 attempt status
  shift 2
  printf '%s\n' "$config" >"$work/$label.toml"
  for attempt in 1 2; do
    say "schemathesis: $label"
    (cd "$work" && "$API_TOOLS/st" --config-file "$label.toml" run "$work/openapi.json" --url "$url" \
      --max-time "$time_per_run" --seed "$seed" --workers 2 \
      --report har --report-har-path "$work/$label.har" --output-truncate false "$@" \
      >"$work/$label.log" 2>&1)
    status=$?
    # CPython 3.11's ast module now and then fails inside schemathesis itself
    # (python/cpython#106905, "AST constructor recursion depth mismatch", while it describes
    # a strategy): a crash of the tool with no finding against the service. Run once more.
    if [ $status -ne 0 ] && [ "$attempt" = 1 ] && ! grep -q 'FAILURES' "$work/$label.log" &&
      grep -q 'AST constructor recursion depth mismatch' "$work/$label.log"; then
      cp "$work/$label.log" "$work/$label.crashed.log"
      say "schemathesis crashed on a CPython bug, not on the service ($work/$label.crashed.log): $label again"
      continue
    fi
    break
  done
  # Its summary: operations tested, failures by kind, test cases generated.
  sed -n '/= \(WARNINGS\|SUMMARY\) =/,$p' "$work/$label.log" |
    grep -vE '^ *$|^Reports|HAR:|^Seed|^Test Phases|Examples|Coverage|Fuzzing|Stateful|💡' >&2
  if [ $status -ne 0 ]; then
    sed -n '/FAILURES/,$p' "$work/$label.log" | head -n 150 | cut -c1-300 >&2
    echo "schemathesis found failures ($label; seed $seed; log and HAR in $work)" >&2
  fi
  return $status
}

# Schemathesis' settings beyond its defaults, each with its reason. A request of more than
# 256 KiB is refused (413) before it is read, whatever it holds: JSON Schema cannot bound a
# document's size in bytes, so a body the schema allows (1,000 notes of 100,000 characters)
# or refuses may be answered 413, which is a refusal and is documented.
common='[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", 401, 403, 404, 409, 413, 429, "5xx"]'

status=0
admin=
grep -q '"/admin/' "$work/openapi.json" && admin=1
fuzz tenant-api "$(tenant_config acme)
$common
[auth.openapi.metrics_token]
bearer = \"$TENANCY_METRICS_TOKEN\"" ${admin:+--exclude-path-regex '^/admin'} || status=1

# No answer acme got holds anything of globex's, and globex's notes are untouched.
python3 - "$work" <<'PY' || status=1
import json, sys
work = sys.argv[1]
rows = json.load(open(f"{work}/globex-notes.json"))
tenant_id = open(f"{work}/globex-id").read().strip()
secrets = {tenant_id} | {n["id"] for n in rows} | {n["title"] for n in rows}
assert tenant_id, "globex's tenant id was not read"
assert len(rows) == 3, f"globex should have its 3 seeded notes, has {len(rows)}"
entries = json.load(open(f"{work}/tenant-api.har"))["log"]["entries"]
leaks = [
    (e["request"]["method"], e["request"]["url"], s)
    for e in entries
    for s in secrets
    if s in (e["response"].get("content", {}).get("text") or "")
]
served = [e for e in entries if "/api/" in e["request"]["url"] and 200 <= e["response"]["status"] < 300]
if not served:
    print("no answer to acme was a success: the fuzzer never reached the tenant", file=sys.stderr)
    sys.exit(1)
for leak in leaks[:10]:
    print("globex's data in an answer to acme:", *leak, file=sys.stderr)
print(f"isolation: {len(entries)} answers to acme ({len(served)} successes under /api) checked against "
      f"globex's {len(secrets)} ids and titles: {len(leaks)} leaks", file=sys.stderr)
sys.exit(1 if leaks else 0)
PY
after=$(api globex GET '/notes?limit=100') || status=1
if [ "$after" != "$(cat "$work/globex-notes.json")" ]; then
  echo "globex's notes changed while acme was fuzzed: $after" >&2
  status=1
fi

if [ -n "$admin" ]; then
  # DELETE /admin/tenants/{identifier} marks a tenant deleted, to be destroyed after its
  # quarantine: its record and audit history stay readable on purpose, which
  # use_after_free (a deleted resource answers 404) reads as a failure. Destroying asks
  # for the identifier again in the body, which no schema can tie to the one in the path:
  # a schema-valid confirmation is refused (400) unless it repeats it.
  fuzz admin-api "$common
[[operations]]
include-path = \"/admin/tenants/{identifier}/destroy\"
checks.positive_data_acceptance.enabled = false
[auth.openapi.admin_token]
bearer = \"$TENANCY_ADMIN_TOKEN\"" --exclude-checks use_after_free --include-path-regex '^/admin' || status=1
fi

if grep -E '"level":"(ERROR|error)"|panicked' "$work/server.log" | head -n 5 >&2; then
  echo "the service logged errors while fuzzed ($work/server.log)" >&2
  status=1
fi
# Kept on failure: the logs, configurations and HAR files (every request and answer).
if [ $status -eq 0 ]; then rm -rf "$work"; else echo "fuzzing failed: its files are in $work" >&2; fi
exit $status
