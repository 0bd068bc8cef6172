#!/usr/bin/env bash
# Quickstart: generates the default service (schema per tenant, X-Tenant-ID header),
# runs it against the local PostgreSQL, creates two tenants and shows that each sees
# only its own data. The generated project stays in target/quickstart/acme-api.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

ensure_cargo_generate
ensure_postgres
command -v curl >/dev/null 2>&1 || die "curl is missing (apt-get install curl)"

use_shared_target_dir
out="$root/target/quickstart"
rm -rf "$out" && mkdir -p "$out"
say "generating the default service into $out/acme-api"
CARGO_NAME="${CARGO_NAME:-actix-tenancy}" cargo generate --path "$root" template --name acme-api \
  --silent --vcs none --destination "$out" >/dev/null
cd "$out/acme-api"

say "building (the first build compiles dependencies: a few minutes)"
cargo build --locked --quiet
bin="$CARGO_TARGET_DIR/debug/acme-api"

database=acme_api_quickstart app_role=acme_api_quickstart_app
psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" \
  -c "DROP ROLE IF EXISTS $app_role" -c "CREATE DATABASE $database"
base="${TENANCY_TEST_DATABASE_URL%/*}"
# Two roles, as in production: the server's user owns the tables and runs migrations; the
# service connects as a role of its own that owns nothing (`migrate --create-app-role`
# creates it), which `serve` insists on.
export TENANCY_MIGRATION_DATABASE_URL="$base/$database"
app_password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
server=${base#*://}
server=${server#*@}
export TENANCY_DATABASE_URL="postgres://$app_role:$app_password@$server/$database"
export TENANCY_HOST=127.0.0.1 TENANCY_PORT="${QUICKSTART_PORT:-8765}"
TENANCY_ADMIN_TOKEN="quickstart-admin-token-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export TENANCY_ADMIN_TOKEN
url="http://127.0.0.1:$TENANCY_PORT"

say "migrating and creating two tenants with the CLI"
"$bin" migrate --create-app-role
"$bin" tenant create acme --name "Acme Corp"
"$bin" tenant create globex --name "Globex Inc"
"$bin" tenant list

say "starting the server on $url (logs: $out/server.log)"
"$bin" serve >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fs "$url/health/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "$url/health/ready" >/dev/null || { cat "$out/server.log" >&2; die "the server did not become ready"; }

show() { printf '\n$ %s\n' "$*"; "$@"; echo; }
show curl -s -X POST "$url/api/notes" -H 'X-Tenant-ID: acme' -H 'content-type: application/json' -d '{"title":"acme roadmap"}'
show curl -s -X POST "$url/api/notes" -H 'X-Tenant-ID: globex' -H 'content-type: application/json' -d '{"title":"globex budget"}'
acme=$(curl -s "$url/api/notes" -H 'X-Tenant-ID: acme')
globex=$(curl -s "$url/api/notes" -H 'X-Tenant-ID: globex')
printf '\nacme sees:   %s\nglobex sees: %s\n' "$acme" "$globex"
show curl -s "$url/api/notes" -H 'X-Tenant-ID: initech'
show curl -s "$url/health"

if [[ "$acme" == *"acme roadmap"* && "$acme" != *globex* && "$globex" == *"globex budget"* && "$globex" != *acme* ]]; then
  echo "OK: each tenant sees only its own notes."
else
  die "tenants are not isolated: acme=$acme globex=$globex"
fi

kill -TERM "$server"
wait "$server" || die "the server did not stop cleanly on SIGTERM"
trap - EXIT
grep -q '"tenant.identifier":"acme"' "$out/server.log" && echo "OK: request logs carry tenant.id and tenant.identifier ($out/server.log)."
cat <<MSG

The service is in $out/acme-api (database: $TENANCY_MIGRATION_DATABASE_URL).
Run it again:
  cd $out/acme-api
  TENANCY_DATABASE_URL=$TENANCY_DATABASE_URL \\
  TENANCY_MIGRATION_DATABASE_URL=$TENANCY_MIGRATION_DATABASE_URL \\
  TENANCY_ADMIN_TOKEN=... cargo run -- serve
Generate your own: cargo generate --path $root template --name my-service
MSG
