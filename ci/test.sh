#!/usr/bin/env bash
# The template's whole test suite: generates every combination in ci/matrix.txt and runs
# `cargo fmt --check`, `cargo clippy --all-targets -- -D warnings`, the unused-code check
# (ci/unused.sh), that its docs name only files, functions and names it has
# (ci/doc_names.py), `cargo deny check licenses bans sources`, `cargo test` on each against
# the local PostgreSQL, that its OpenAPI document is valid (openapi-spec-validator), a
# schemathesis run against it once per resolution (ci/fuzz.sh) and
# the deployment files' checks (ci/deploy.sh), plus checks of
# the template itself (shell scripts, the pre hook's refusals, the questions asked at a
# terminal, the docs). Prints one line per check and `N passed, N failed` at the end;
# exits non-zero on any failure.
#
#   bash ci/test.sh                 # everything in ci/matrix.txt (a pairwise set)
#   bash ci/test.sh admin_api=false # only matrix lines containing that text
#   bash ci/test.sh --full          # every isolation x resolution pair (about 20 more
#                                   # combinations: ~20 minutes warm)
#   bash ci/test.sh --latest [FILTER]  # the same checks with the newest compatible
#                                   # dependencies instead of the locked ones (`cargo
#                                   # update` in each generated project), and a report of
#                                   # what moved: run it before `bash ci/lock.sh --update`
#
# Generated projects build with the lock of template/locks/ that their answers pick, and
# every cargo command here runs --locked: a lock that does not fit fails, whatever the
# registry holds by now. The template's checks include `ci/lock.sh --check` and the default
# combination generated under four other names (short, long, hyphens, underscores:
# formatting, lints, the build and the deployment files may not depend on the name).
#
# Limits: TEST_TIMEOUT (seconds for one combination's `cargo test`, default 900) and
# TIME_BUDGET (seconds after which no combination starts, default 4500; raise it for
# --full).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"

started=$(date +%s)
ensure_cargo_generate
ensure_cargo_deny
ensure_postgres
ensure_german_locale
ensure_other_postgres
ensure_pgbouncer
ensure_redis
ensure_deploy_tools
ensure_api_tools
use_shared_target_dir
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

latest=
if [ "${1:-}" = --latest ]; then latest=1; shift; fi
filter="${1:-}"
updates=$(mktemp) # with --latest: what `cargo update` moved, for the report
passed=0 failed=0
summary=("$(printf '%-6s %-62s %4ss' setup "tools and services" $(($(date +%s) - started)))")
record() { # name, status, seconds
  summary+=("$(printf '%-6s %-62s %4ss' "$2" "$1" "$3")")
  if [ "$2" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  printf '%s %s (%ss)\n' "$2" "$1" "$3"
}

# Runs a step of a check and prints its seconds, so that the log shows where time goes.
timed() { # step name, command...
  local name=$1 start status; shift
  start=$(date +%s)
  "$@"
  status=$?
  printf '  %s: %ss\n' "$name" $(($(date +%s) - start)) >&2
  return $status
}

run_check() { # name, command...
  local name=$1 start; shift
  start=$(date +%s)
  say "$name"
  if "$@"; then record "$name" PASS $(($(date +%s) - start)); else record "$name" FAIL $(($(date +%s) - start)); fi
}

# Generates a project (name, key=value...) and prints its path. With --latest, its lock is
# moved to the newest compatible versions first, and what moved goes to the report.
generate_for_test() {
  local project
  project=$(generate "$root" "$@") || { echo "generation failed" >&2; return 1; }
  if grep -rInE '\{\{ *[A-Za-z_-]+ *\}\}|\{%|%\}' "$project" --exclude-dir=target >&2; then
    echo "unrendered Liquid left in $project" >&2; return 1
  fi
  if [ -n "$latest" ]; then
    # What moves, and (--verbose) what stays behind: needing a newer Rust than
    # rust-version, or outside the requirements (a new major version).
    (cd "$project" && cargo update --verbose 2>&1) |
      grep -E '^ *(Updating|Adding|Removing|Downgrading|Unchanged) [a-z]' |
      grep -v 'crates.io index' >>"$updates"
  fi
  echo "$project"
}

# The project's Cargo.lock is exactly what cargo writes for it (it would rewrite one whose
# entries were out of order), and its packages build with the declared rust-version.
lock_fits() { # project
  local project=$1 written
  written=$(mktemp)
  cp "$project/Cargo.lock" "$written"
  (cd "$project" && cargo metadata --locked --format-version 1 >"$written.json") &&
    (cd "$project" && cargo metadata --offline --format-version 1 >/dev/null) &&
    python3 "$root/ci/locks.py" rust-version "$written.json" "$project/Cargo.toml" >/dev/null
  local status=$?
  if [ $status -eq 0 ] && ! cmp -s "$written" "$project/Cargo.lock"; then
    echo "cargo rewrote the generated Cargo.lock:" >&2
    diff "$written" "$project/Cargo.lock" | head -n 20 >&2
    status=1
  fi
  rm -f "$written" "$written.json"
  return $status
}

# What the fuzzer has covered so far: ci/fuzz.sh runs once per resolution, on the first
# matrix line that has it, and on the first line with an admin API (which places tenants
# on servers and moves them: its `server` and `to` fields) unless a run covered one
# already.
fuzzed=" "

check_combination() {
  local project fuzz=: resolution placement=
  resolution=$(grep -oE 'resolution=[a-z]+' <<<"$1")
  resolution=${resolution#resolution=}
  if [[ "$1" == *admin_api=true* ]]; then
    placement=placement
  fi
  if [[ "$fuzzed" != *" $resolution "* ]] ||
    [[ -n "$placement" && "$fuzzed" != *" $placement "* ]]; then
    fuzzed+="$resolution $placement "
    fuzz=fuzz_service
  fi
  # shellcheck disable=SC2086 # the matrix line is a list of key=value words
  project=$(generate_for_test acme-api $1) || return 1
  stands_alone "$project" || return 1
  python3 "$root/ci/doc_names.py" "$project" >&2 || return 1
  lock_fits "$project" || return 1
  (
    cd "$project" &&
      cargo fmt --check &&
      timed clippy cargo clippy --locked --quiet --all-targets -- -D warnings &&
      timed unused bash "$root/ci/unused.sh" "$project" &&
      # cargo deny reads the metadata of every target's dependencies: fetch them first
      # (a build downloads only this platform's), then check without the network.
      cargo fetch --locked --quiet &&
      cargo deny --log-level error --locked --offline check licenses bans sources &&
      timed "test build" cargo test --locked --quiet --no-run &&
      timed tests run_tests "$project" &&
      valid_openapi &&
      timed fuzz "$fuzz" "$project" "$1" &&
      timed deploy bash "$root/ci/deploy.sh" "$project" >&2
  ) || return 1
  rm -rf "$(dirname "$project")"
}

# The project's OpenAPI document (what `GET /openapi.json` serves) is valid OpenAPI 3.1.
valid_openapi() {
  local bin
  bin=$(service_binary "$PWD") &&
    "$bin" openapi >target-openapi.json &&
    "$API_TOOLS/openapi-spec-validator" target-openapi.json >&2 &&
    rm -f target-openapi.json
}

# schemathesis against the running service, checking every answer and the tenants'
# isolation (ci/fuzz.sh).
fuzz_service() { # project, matrix line
  # shellcheck disable=SC2086 # the matrix line is a list of key=value words
  bash "$root/ci/fuzz.sh" "$1" $2 >&2
}

# The default combination under another name: formatting, lints, the build and the
# deployment files must not depend on the name.
check_name() { # name, key=value...
  local project
  project=$(generate_for_test "$@") || return 1
  stands_alone "$project" || return 1
  lock_fits "$project" || return 1
  (
    cd "$project" &&
      cargo fmt --check &&
      cargo clippy --locked --quiet --all-targets -- -D warnings &&
      service_binary "$project" >/dev/null &&
      bash "$root/ci/deploy.sh" "$project" >&2
  ) || return 1
  rm -rf "$(dirname "$project")"
}

# A generated project points at nothing outside itself: every file path its text names
# (docs/*.md, deploy/...) exists in it, no Markdown link leaves it, and nothing names the
# template's own material.
stands_alone() { # project
  local project=$1 missing=0 path
  while IFS= read -r path; do
    [ -e "$project/$path" ] || { echo "$path is named in the project but not generated" >&2; missing=1; }
  done < <(grep -rIhoE '\b(docs/[a-z_-]+\.md|deploy/k8s/[a-z_./-]+[a-z])' "$project" --exclude-dir=target | sort -u)
  if grep -rInE '\]\(\.\./|\.\./shared|reference guide|fastapi' "$project" --exclude-dir=target >&2; then
    echo "the project points outside itself (above)" >&2
    missing=1
  fi
  return $missing
}

hook_rejects() { # name, expected message, key=value...
  local dest out name=$1 expected=$2 args=()
  shift 2
  for kv in "$@"; do args+=(-d "$kv"); done
  dest=$(mktemp -d)
  out=$(CARGO_NAME=ci cargo generate --path "$root" template --name "$name" --silent --vcs none --destination "$dest" "${args[@]}" 2>&1)
  local status=$?
  rm -rf "$dest"
  if [ $status -ne 0 ] && grep -qF "$expected" <<<"$out"; then return 0; fi
  echo "expected a refusal containing '$expected', got: $out" >&2
  return 1
}

shell_scripts() {
  local scripts=(ci/*.sh ci/bench/*.sh .ci/run)
  (cd "$root" && "$DEPLOY_TOOLS/shellcheck" -x "${scripts[@]}")
}

run_check "template: shell scripts" shell_scripts
run_check "template: docs name only tests and settings that exist" bash "$root/ci/docs.sh"
run_check "template: pre-hook refuses the name '9lives'" hook_rejects 9lives "must start with an ASCII letter"
run_check "template: pre-hook refuses the name 'test'" hook_rejects test "which Rust reserves"
run_check "template: pre-hook refuses chain=jwt,jwt" \
  hook_rejects demo "names 'jwt' twice" resolution=chain chain=jwt,jwt
run_check "template: pre-hook refuses chain=jwt" \
  hook_rejects demo "needs at least two resolvers" resolution=chain chain=jwt
run_check "template: pre-hook refuses chain=jwt,cookie" \
  hook_rejects demo "'cookie' is not a resolver" resolution=chain chain=jwt,cookie
run_check "template: interactive generation asks only what applies (ci/interactive.py)" \
  python3 "$root/ci/interactive.py"
run_check "template: the locks are current (ci/lock.sh --check)" bash "$root/ci/lock.sh" --check
run_check "template: pre-hook refuses the name 'tokio' (a locked crate)" \
  hook_rejects tokio "the name of a crate the service depends on"
run_check "template: pre-hook refuses a 56-character name with the Kubernetes manifests" \
  hook_rejects a_name_one_character_longer_than_the_manifests_allow_x56 "too long for the Kubernetes manifests"

combinations() {
  if [ "$filter" = --full ]; then
    for isolation in schema rls database hybrid; do
      for resolution in header subdomain path jwt chain; do
        echo "isolation=$isolation resolution=$resolution admin_api=true"
      done
    done
  else
    cat "$root/ci/matrix.txt"
  fi
}

while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  [ -n "$filter" ] && [ "$filter" != --full ] && [[ "$line" != *"$filter"* ]] && continue
  # Past TIME_BUDGET seconds no combination starts, so that the summary is printed
  # before CI's own limit (90 minutes) ends the run without one.
  if [ $(($(date +%s) - started)) -gt "${TIME_BUDGET:-4500}" ]; then
    echo "not started: the run is past its TIME_BUDGET (${TIME_BUDGET:-4500} s)" >&2
    record "generated: $line" FAIL 0
    continue
  fi
  run_check "generated: $line" check_combination "$line"
done < <(combinations)

# The default combination under other names: three letters, 40 characters with hyphens,
# the longest name the manifests allow (55) with underscores, and the longest name there
# is (64) without them.
if [ -z "$filter" ] || [ "$filter" = --full ]; then
  for name in k8s a-very-long-service-name-for-billing-api a_billing_service_named_as_long_as_kubernetes_allows_55; do
    run_check "generated: the default combination named $name" check_name "$name"
  done
  name=a_billing_service_named_as_long_as_the_generator_allows_at_all64
  run_check "generated: the default combination named $name, kubernetes=false" \
    check_name "$name" kubernetes=false
fi

echo
echo "Summary"
printf '  %s\n' "${summary[@]}"
if [ -n "$latest" ]; then
  echo
  if grep -qv Unchanged "$updates"; then
    echo "The newest compatible versions, against template/locks/ (cargo update in each project):"
    grep -v Unchanged "$updates" | sed -E 's/^ +//' | sort -u | sed 's/^/  /'
    echo "To adopt them: bash ci/lock.sh --update, then bash ci/test.sh."
  else
    echo "The locks hold the newest compatible versions: cargo update changed nothing."
  fi
  if grep -q 'Unchanged.*requires Rust' "$updates"; then
    echo "Held back by rust-version (newer releases need a newer Rust):"
    grep 'Unchanged.*requires Rust' "$updates" | sed -E 's/^ +Unchanged //' | sort -u | sed 's/^/  /'
  fi
  if grep -v 'requires Rust' "$updates" | grep -q Unchanged; then
    echo "Newer releases the requirements exclude (a new major version, or one a dependency excludes):"
    grep Unchanged "$updates" | grep -v 'requires Rust' | sed -E 's/^ +Unchanged //' | sort -u | sed 's/^/  /'
  fi
fi
rm -f "$updates"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
