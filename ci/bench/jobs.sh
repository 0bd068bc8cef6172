#!/usr/bin/env bash
# Benchmark: background jobs per second, schema per tenant, release build, generated
# defaults but the number of workers. Two job kinds are added to the generated project
# for this benchmark alone: a no-op job (what the queue itself costs: claim, a scoped
# connection, the end recorded) and a one-query job (`SELECT count(*) FROM notes` on the
# job's tenant connection). JOBS jobs spread over TENANTS tenants are inserted at once,
# then drained by one `worker` process with 1, then 4 workers; the rate is the jobs over
# the time from the first job's end to the last's. Beside it, in the same run, the bare
# loop the queue is built on: pgbench sessions that each take the next row of a plain
# table `FOR UPDATE SKIP LOCKED` and mark it done (no tenant, no lease, no turns).
# Reports numbers; it does not pass or fail.
#
#   bash ci/bench/jobs.sh                      # 20,000 jobs over 100 tenants
#   JOBS=5000 TENANTS=10 bash ci/bench/jobs.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

JOBS=${JOBS:-20000}
TENANTS=${TENANTS:-100}
ensure_cargo_generate
ensure_postgres
command -v pgbench >/dev/null 2>&1 || die "pgbench is missing (apt-get install postgresql-contrib)"
use_shared_target_dir
base="${TENANCY_TEST_DATABASE_URL%/*}"

project=$(generate "$root" acme-api "isolation=schema")
say "adding the benchmark's job kinds"
cat >"$project/src/bench_jobs.rs" <<'EOF'
//! Job kinds of ci/bench/jobs.sh (not part of the generated service).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};

use crate::db::TenantConnection;
use crate::jobs::{Job, JobError};
use crate::schema::notes;

#[derive(Serialize, Deserialize)]
pub struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "bench_noop";

    async fn run(self, _: &mut TenantConnection) -> Result<serde_json::Value, JobError> {
        Ok(serde_json::Value::Null)
    }
}

#[derive(Serialize, Deserialize)]
pub struct CountNotes {}

impl Job for CountNotes {
    const KIND: &'static str = "bench_count";

    async fn run(self, conn: &mut TenantConnection) -> Result<serde_json::Value, JobError> {
        let notes: i64 = notes::table.count().get_result(conn).await?;
        Ok(serde_json::json!(notes))
    }
}
EOF
echo "pub mod bench_jobs;" >>"$project/src/lib.rs"
sed -i 's|Kinds::default().with::<routes::notes::ImportNotes>()|Kinds::default()\n        .with::<routes::notes::ImportNotes>()\n        .with::<crate::bench_jobs::Noop>()\n        .with::<crate::bench_jobs::CountNotes>()|' \
  "$project/src/startup.rs"
grep -q bench_jobs::Noop "$project/src/startup.rs" || die "could not add the job kinds to src/startup.rs"
say "building (release)"
(cd "$project" && cargo build --locked --quiet --release)
cli="$CARGO_TARGET_DIR/release/acme-api"

database=actix_tenancy_bench_jobs app_role=actix_tenancy_bench_jobs_app
drop() {
  psql "$TENANCY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" \
    -c "DROP ROLE IF EXISTS $app_role"
}
drop
psql "$TENANCY_TEST_DATABASE_URL" -qc "CREATE DATABASE $database"
worker_pid=
log=$(mktemp)
cleanup() {
  if [ -n "$worker_pid" ]; then kill "$worker_pid" 2>/dev/null || true; fi
  drop >/dev/null 2>&1 || true
  rm -rf "$(dirname "$project")" "$log"
}
trap cleanup EXIT
# Two roles, as the service insists: the owner migrates, workers connect as a role of
# their own (created by `migrate --create-app-role`).
url="$base/$database"
server=${base#*://}
server=${server#*@}
export TENANCY_MIGRATION_DATABASE_URL="$url" RUST_LOG=error
export TENANCY_DATABASE_URL="postgres://$app_role:bench-$RANDOM-$RANDOM@$server/$database"
"$cli" migrate --create-app-role >/dev/null
say "registering $TENANTS tenants"
psql "$url" -qc "INSERT INTO tenancy.tenants (id, identifier, name, status, isolation)
  SELECT gen_random_uuid(), 't' || i, 'Tenant ' || i, 'active', 'schema' FROM generate_series(1, $TENANTS) AS i"
"$cli" migrate >/dev/null

# Inserts JOBS jobs of `kind`, spread evenly over the tenants, with every turn ready.
enqueue() { # kind
  psql "$url" -qc "DELETE FROM tenancy.jobs" -c "
    WITH t AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM tenancy.tenants)
    INSERT INTO tenancy.jobs (tenant_id, queue, kind, payload, max_attempts)
    SELECT t.id, 'default', '$1', '{}', 5
    FROM generate_series(0, $JOBS - 1) AS g JOIN t ON t.n = g % $TENANTS" -c "
    INSERT INTO tenancy.job_turns (tenant_id) SELECT id FROM tenancy.tenants
    ON CONFLICT (tenant_id) DO UPDATE SET ready = true"
}

# Drains the queue with one worker process of `workers` workers; prints jobs per second.
drain() { # kind, workers
  enqueue "$1"
  TENANCY_JOBS_WORKERS=$2 "$cli" worker >/dev/null 2>"$log" &
  worker_pid=$!
  local left
  while :; do
    left=$(psql "$url" -tAc "SELECT count(*) FROM tenancy.jobs WHERE state <> 'done'")
    [ "$left" = 0 ] && break
    if ! kill -0 "$worker_pid" 2>/dev/null; then
      tail -n 5 "$log" >&2
      die "the worker stopped with $left jobs left"
    fi
    sleep 0.2
  done
  kill -TERM "$worker_pid"
  wait "$worker_pid" || true
  worker_pid=
  psql "$url" -tAc "SELECT round(count(*) / extract(epoch FROM max(finished_at) - min(finished_at)))
    FROM tenancy.jobs"
}

# The bare loop: pgbench sessions claiming and ending rows of a plain table.
bare() { # clients
  psql "$url" -qc "DROP TABLE IF EXISTS bare_jobs" -c "
    CREATE TABLE bare_jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      state text NOT NULL DEFAULT 'queued', payload jsonb NOT NULL DEFAULT '{}')" -c "
    CREATE INDEX ON bare_jobs (id) WHERE state = 'queued'" -c "
    INSERT INTO bare_jobs (state) SELECT 'queued' FROM generate_series(1, $JOBS)"
  local script
  script=$(mktemp)
  cat >"$script" <<'EOF'
BEGIN;
SELECT id FROM bare_jobs WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED \gset
UPDATE bare_jobs SET state = 'done' WHERE id = :id;
COMMIT;
EOF
  pgbench -n -f "$script" -c "$1" -j "$1" -t $((JOBS / $1 - 10)) "$url" 2>/dev/null |
    sed -nE 's/^tps = ([0-9]+)\..*/\1/p'
  rm -f "$script"
}

rows=()
for workers in 1 4; do
  say "$workers worker(s): no-op jobs"
  noop=$(drain bench_noop "$workers")
  say "$workers worker(s): one-query jobs"
  count=$(drain bench_count "$workers")
  say "$workers session(s): the bare SKIP LOCKED loop"
  loop=$(bare "$workers")
  rows+=("$(printf '| %s | %s | %s | %s |' "$workers" "$noop" "$count" "$loop")")
done

echo
echo "jobs per second: $JOBS jobs over $TENANTS tenants, schema per tenant, release build, $(nproc) cores"
echo "| workers | no-op job | one-query job | bare SKIP LOCKED loop (pgbench sessions) |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
