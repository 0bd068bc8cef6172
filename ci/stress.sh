#!/usr/bin/env bash
# Hunts flaky tests: generates each combination of ci/matrix.txt and runs its `cargo test`
# RUNS times in a row (default 3), as ci/test.sh runs it (ci/lib.sh: run_tests). Prints a
# line per run and, for a failed one, what failed; keeps a failed run's project.
#
#   bash ci/stress.sh               # every combination, 3 runs each (~30 minutes)
#   RUNS=10 bash ci/stress.sh redis # only matrix lines containing "redis", 10 runs each
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

ensure_cargo_generate
ensure_postgres
ensure_other_postgres
ensure_pgbouncer
ensure_redis
use_shared_target_dir
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

filter=${1:-} runs=${RUNS:-3} failed=0 total=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  [[ "$line" == *"$filter"* ]] || continue
  # shellcheck disable=SC2086 # the matrix line is a list of key=value words
  project=$(generate "$root" acme-api $line 2>/dev/null) || { echo "FAIL  generation: $line"; failed=$((failed + 1)); continue; }
  if ! (cd "$project" && cargo test --locked --quiet --no-run >/dev/null 2>&1); then
    echo "FAIL  build: $line ($project)"
    failed=$((failed + 1))
    continue
  fi
  keep=
  for run in $(seq 1 "$runs"); do
    total=$((total + 1))
    if out=$(cd "$project" && run_tests "$project" 2>&1); then
      echo "ok    run $run: $line"
    else
      echo "FAIL  run $run: $line ($project)"
      while IFS= read -r said; do echo "      $said"; done <<<"$out"
      failed=$((failed + 1)) keep=1
    fi
  done
  [ -n "$keep" ] || rm -rf "$(dirname "$project")"
done <"$root/ci/matrix.txt"
echo "$failed of $total runs failed"
[ "$failed" -eq 0 ]
