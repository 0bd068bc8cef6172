# Shared by the ci/ scripts: make sure the tools and services they need are there.
# shellcheck shell=bash

CARGO_GENERATE_VERSION=0.23.7
CARGO_DENY_VERSION=0.20.2

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust (https://rustup.rs), 1.89 or newer"
}

# A cargo subcommand at a pinned version, installed once when missing:
# ensure_cargo_tool NAME VERSION [WHY].
ensure_cargo_tool() {
  ensure_cargo
  if cargo "${1#cargo-}" --version 2>/dev/null | grep -q "$2"; then
    return
  fi
  say "installing $1 $2 (once${3:+; $3})"
  cargo install "$1" --version "$2" --locked >&2 || die "could not install $1 $2"
}

ensure_cargo_generate() {
  ensure_cargo_tool cargo-generate "$CARGO_GENERATE_VERSION" "newer releases need a newer rustc"
}

# cargo-deny, for the supply-chain check of every generated combination.
ensure_cargo_deny() {
  ensure_cargo_tool cargo-deny "$CARGO_DENY_VERSION"
}

# The PostgreSQL server the tests use; override with TENANCY_TEST_DATABASE_URL.
export TENANCY_TEST_DATABASE_URL="${TENANCY_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

postgres_up() { psql "$TENANCY_TEST_DATABASE_URL" -tAc 'SELECT 1' >/dev/null 2>&1; }

ensure_postgres() {
  command -v psql >/dev/null 2>&1 || die "psql is missing: install the PostgreSQL client (apt-get install postgresql-client)"
  postgres_up && return
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    local version
    version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    say "starting the installed PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    for _ in $(seq 1 30); do postgres_up && return; sleep 1; done
  fi
  die "PostgreSQL is not reachable at $TENANCY_TEST_DATABASE_URL. Install and start it (apt-get install postgresql), or point TENANCY_TEST_DATABASE_URL at a server where that user may create databases."
}

# Redis at 127.0.0.1:6379, for the combinations with redis_cache=true (their tests also
# start throwaway redis-server processes of their own).
ensure_redis() {
  command -v openssl >/dev/null 2>&1 || die "openssl is missing: the Redis TLS test makes its certificates with it (apt-get install openssl)"
  if command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    return
  fi
  if command -v redis-server >/dev/null 2>&1; then
    say "starting the installed Redis"
    mkdir -p /tmp/actix-tenancy-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/actix-tenancy-redis --logfile /tmp/actix-tenancy-redis/redis.log >&2
    for _ in $(seq 1 20); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return; sleep 0.5; done
  fi
  die "Redis is not reachable at 127.0.0.1:6379. Install and start it (apt-get install redis-server)."
}

# A second PostgreSQL server, for the tests that place a tenant's database on another
# server (database per tenant): a throwaway cluster on a free local port, stopped when
# the calling script exits. Exports TENANCY_TEST_OTHER_SERVER=host:port; set it yourself
# to use a server of your own (the TENANCY_TEST_DATABASE_URL user must be able to create
# databases and roles there).
ensure_other_postgres() {
  [ -n "${TENANCY_TEST_OTHER_SERVER:-}" ] && return
  local initdb port dir run=()
  initdb=$(command -v initdb || find /usr/lib/postgresql -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
  [ -x "$initdb" ] || die "initdb not found: install the PostgreSQL server (apt-get install postgresql), or set TENANCY_TEST_OTHER_SERVER to host:port of a second PostgreSQL server"
  for port in $(seq 5433 5499); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
  done
  dir=$(mktemp -d /tmp/actix-tenancy-pg.XXXXXX)
  # PostgreSQL refuses to run as root.
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; run=(runuser -u postgres --); fi
  say "starting a second PostgreSQL server on 127.0.0.1:$port (for tenants placed on another server)"
  "${run[@]}" "$initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
  "${run[@]}" "$(dirname "$initdb")/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || die "the second PostgreSQL server did not start: $(tail -n 5 "$dir/server.log")"
  OTHER_POSTGRES_STOP=("${run[@]}" "$(dirname "$initdb")/pg_ctl" -D "$dir/data" -m immediate stop)
  OTHER_POSTGRES_DIR=$dir
  trap stop_other_postgres EXIT
  export TENANCY_TEST_OTHER_SERVER="127.0.0.1:$port"
}

stop_other_postgres() {
  "${OTHER_POSTGRES_STOP[@]}" >/dev/null 2>&1 || true
  rm -rf "$OTHER_POSTGRES_DIR"
}

# Generates the template with the given -d values into a new temporary folder and
# prints the project's path.
generate() {
  local root=$1 name=$2; shift 2
  local dest args=()
  dest=$(mktemp -d --suffix=-actix-tenancy)
  for kv in "$@"; do args+=(-d "$kv"); done
  CARGO_NAME="${CARGO_NAME:-actix-tenancy}" cargo generate --path "$root" template \
    --name "$name" --silent --vcs none --destination "$dest" "${args[@]}" >&2 || return 1
  printf '%s/%s\n' "$dest" "$name"
}
