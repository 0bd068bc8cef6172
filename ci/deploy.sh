#!/usr/bin/env bash
# Checks a generated project's deployment files: `bash ci/deploy.sh PROJECT_DIR`.
#   - Dockerfile: hadolint; every YAML file: yamllint (ci/yamllint.yaml); workflows:
#     actionlint; .github/dependabot.yml: Dependabot's schema (check-jsonschema); shell
#     scripts: shellcheck.
#   - With deploy/k8s: both overlays render (`kubectl kustomize`), validate against the
#     Kubernetes schemas (kubernetes-validate --strict, at 1.30 and the latest), use names
#     the API server accepts (ci/k8s_names.py), and their numbers agree
#     (ci/k8s_numbers.py: grace period vs drain, replicas vs connections).
#   - checkov on the Dockerfile and the rendered manifests, and its secret scan on every
#     file (skipped checks and why: below).
#   - With deploy/k8s, the dev overlay configures the service it deploys: the project's
#     binary, run with exactly the environment the manifests give the migrate Job, then
#     the Deployment (only the database and Redis addresses pointed at the local servers),
#     migrates, becomes ready and warns of no variable it does not know.
# The tools install themselves (ci/lib.sh: ensure_deploy_tools). Prints one line per
# check; exits non-zero if any fails.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"
project=$(cd "${1:?usage: deploy.sh PROJECT_DIR}" && pwd)
ensure_deploy_tools
cd "$project" || exit 2

# checkov checks that do not apply, and why.
skips=(
  # HEALTHCHECK: the distroless runtime has no shell or HTTP client to run one; the
  # orchestrator probes /health/live and /health/ready instead.
  CKV_DOCKER_2
  # Image digests: the overlays pin a version tag (`images: newTag`); a digest needs the
  # built image, which only the release knows (set `digest:` there).
  CKV_K8S_43
  # Secrets as files: the service reads its settings from the environment (TENANCY_*),
  # so Secrets come in through envFrom; the manifests themselves never hold one.
  CKV_K8S_35
)
skip_list=$(IFS=,; echo "${skips[*]}")

failures=0
check() { # name, command...
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok    $name"
  else
    echo "FAIL  $name"
    tail -n 40 <<<"$out" | while IFS= read -r line; do echo "      $line"; done
    failures=$((failures + 1))
  fi
}

checkov_quiet() { # checkov arguments...
  "$DEPLOY_TOOLS/checkov" --quiet --compact --skip-download --skip-check "$skip_list" "$@"
}

mapfile -t yaml_files < <(find . -path ./target -prune -o \( -name '*.yml' -o -name '*.yaml' \) -print | sort)
mapfile -t scripts < <(find . -path ./target -prune -o -name '*.sh' -print | sort)
mapfile -t workflows < <(find .github/workflows -name '*.yml' 2>/dev/null | sort)

check "hadolint Dockerfile" "$DEPLOY_TOOLS/hadolint" Dockerfile
check "yamllint (${#yaml_files[@]} files)" "$DEPLOY_TOOLS/yamllint" --strict -c "$root/ci/yamllint.yaml" "${yaml_files[@]}"
if [ ${#workflows[@]} -gt 0 ]; then
  # shellcheck disable=SC2086 # ACTIONLINT is a command with its arguments
  check "actionlint (${#workflows[@]} workflows)" $ACTIONLINT "${workflows[@]}"
fi
if [ ${#scripts[@]} -gt 0 ]; then
  check "shellcheck (${#scripts[@]} scripts)" "$DEPLOY_TOOLS/shellcheck" "${scripts[@]}"
fi
if [ -f .github/dependabot.yml ]; then
  check "check-jsonschema: .github/dependabot.yml (Dependabot's schema)" \
    "$DEPLOY_TOOLS/check-jsonschema" --builtin-schema vendor.dependabot .github/dependabot.yml
fi

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT

render_and_validate() { # overlay
  kubectl kustomize "deploy/k8s/overlays/$1" >"$rendered/$1.yaml" &&
    "$DEPLOY_TOOLS/kubernetes-validate" --strict --quiet -k 1.30.0 "$rendered/$1.yaml" &&
    "$DEPLOY_TOOLS/kubernetes-validate" --strict --quiet "$rendered/$1.yaml" &&
    "$DEPLOY_TOOLS/python" "$root/ci/k8s_names.py" "$rendered/$1.yaml" &&
    "$DEPLOY_TOOLS/python" "$root/ci/k8s_numbers.py" "$rendered/$1.yaml" deploy/k8s/base/kustomization.yaml
}

# One checkov run (it takes most of a minute to start) over a copy of the project in which
# the kustomize sources are replaced by what each overlay renders, less the Secrets
# (their values are the placeholders of overlays/dev/*.env.example, scanned as files).
checkov_all() {
  local scan=$rendered/scan overlay
  mkdir -p "$scan" &&
    tar --exclude=./target --exclude=./.git --exclude='./deploy/k8s/*.yaml' \
      --exclude='./deploy/k8s/*/*.yaml' --exclude='./deploy/k8s/*/*/*.yaml' -cf - . |
    tar -C "$scan" -xf - || return 1
  if [ -d deploy/k8s ]; then
    for overlay in dev prod; do
      "$DEPLOY_TOOLS/python" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] != "Secret"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
' "$rendered/$overlay.yaml" "$scan/rendered-$overlay.yaml" || return 1
    done
  fi
  checkov_quiet --framework dockerfile kubernetes -d "$scan"
}

# checkov's secret scan over every file. What it flags must be a placeholder (a line
# with one of the markers below) or test data (under tests/: values made for the tests,
# and tests/fixtures' keys, which sign nothing but test tokens); anything else fails.
no_secret_in_any_file() {
  local report=$rendered/secrets.json
  "$DEPLOY_TOOLS/checkov" --quiet --compact --skip-download --framework secrets \
    --enable-secret-scan-all-files -d . -o json >"$report" 2>/dev/null
  "$DEPLOY_TOOLS/python" - "$report" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
markers = ("change-me", "REPLACE-ME", "s3cret", ":secret@", ":password@", ":pw@")
accepted = rejected = 0
for run in report if isinstance(report, list) else [report]:
    for finding in run["results"]["failed_checks"]:
        path = finding["file_path"].lstrip("/")
        line = open(path, encoding="utf-8").read().splitlines()[finding["file_line_range"][0] - 1]
        if path.startswith("tests/") or any(m in line for m in markers):
            accepted += 1
        else:
            rejected += 1
            print(f"{path}:{finding['file_line_range'][0]}: {finding['check_name']}: {line.strip()[:100]}")
print(f"{accepted} placeholders or test values, {rejected} possible secrets")
sys.exit(1 if rejected else 0)
PY
}

# `url` on the local server: host, port, database and user replaced, password and
# options kept.
on_local_server() { # url, user, database
  python3 - "$@" <<'PY'
import os, sys, urllib.parse as u
url, user, database = sys.argv[1:]
parts = u.urlsplit(url)
local = u.urlsplit(os.environ["TENANCY_TEST_DATABASE_URL"])
password = f":{parts.password}" if parts.password else ""
netloc = f"{user}{password}@{local.hostname}:{local.port or 5432}"
print(u.urlunsplit((parts.scheme, netloc, "/" + database, parts.query, "")))
PY
}

manifests_configure_the_service() {
  local bin database role env_job env_server env_worker port log pid status
  bin=$(service_binary "$PWD") || return 1
  database=k8s_check_$RANDOM$RANDOM role=k8s_app_$RANDOM$RANDOM
  psql "$TENANCY_TEST_DATABASE_URL" -qc "CREATE DATABASE $database" || return 1
  # shellcheck disable=SC2064 # expand now: the names are this call's
  trap "psql '$TENANCY_TEST_DATABASE_URL' -qc 'DROP DATABASE IF EXISTS $database WITH (FORCE)' -c 'DROP ROLE IF EXISTS $role' >/dev/null 2>&1; rm -rf '$rendered'" EXIT
  local_env() { # workload kind: its environment from the dev overlay, addresses pointed here
    local owner
    owner=$(python3 -c 'import os,urllib.parse as u; print(u.urlsplit(os.environ["TENANCY_TEST_DATABASE_URL"]).username or "postgres")')
    python3 "$root/ci/k8s_env.py" "$rendered/dev.yaml" "$1" | while IFS= read -r line; do
      case $line in
        TENANCY_DATABASE_URL=*) echo "TENANCY_DATABASE_URL=$(on_local_server "${line#*=}" "$role" "$database")" ;;
        TENANCY_MIGRATION_DATABASE_URL=*) echo "TENANCY_MIGRATION_DATABASE_URL=$(on_local_server "${line#*=}" "$owner" "$database")" ;;
        TENANCY_REDIS_URL=*) echo "TENANCY_REDIS_URL=redis://127.0.0.1:6379/0" ;;
        *) echo "$line" ;;
      esac
    done
  }
  mapfile -t env_job < <(local_env Job) || return 1
  mapfile -t env_server < <(local_env Deployment:server) || return 1
  mapfile -t env_worker < <(local_env Deployment:worker) || return 1
  [ ${#env_job[@]} -gt 0 ] && [ ${#env_server[@]} -gt 0 ] && [ ${#env_worker[@]} -gt 0 ] ||
    { echo "no environment rendered"; return 1; }
  if printf '%s\n' "${env_server[@]}" "${env_worker[@]}" | grep -q '^TENANCY_MIGRATION_DATABASE_URL='; then
    echo "the Deployments' pods hold the owner's URL (TENANCY_MIGRATION_DATABASE_URL)"
    return 1
  fi
  log=$rendered/service.log
  env -i PATH="$PATH" "${env_job[@]}" timeout 300 "$bin" migrate --create-app-role >"$log" 2>&1 ||
    { echo "the migrate Job's command failed:"; cat "$log"; return 1; }
  if grep -q "is not a setting" "$log"; then echo "migrate warned:"; cat "$log"; return 1; fi
  port=$(printf '%s\n' "${env_server[@]}" | sed -n 's/^TENANCY_PORT=//p')
  (exec 3<>"/dev/tcp/127.0.0.1/${port:-8000}") 2>/dev/null && { echo "port ${port:-8000} is taken here"; return 1; }
  env -i PATH="$PATH" "${env_server[@]}" "$bin" serve >"$log" 2>&1 &
  pid=$!
  status=000
  for _ in $(seq 1 60); do
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port:-8000}/health/ready") && [ "$status" = 200 ] && break
    sleep 0.5
  done
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
  local exit_code=$?
  if [ "$status" != 200 ] || [ $exit_code -ne 0 ] || grep -q "is not a setting" "$log"; then
    echo "serve with the Deployment's environment: /health/ready $status, exit $exit_code"
    cat "$log"
    return 1
  fi
  # The worker Deployment's environment runs job workers, which stop cleanly on SIGTERM.
  env -i PATH="$PATH" "${env_worker[@]}" "$bin" worker >"$log" 2>&1 &
  pid=$!
  local running=
  for _ in $(seq 1 60); do
    grep -q '"job workers running"' "$log" && running=1 && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
  exit_code=$?
  if [ -z "$running" ] || [ $exit_code -ne 0 ] || grep -q "is not a setting" "$log"; then
    echo "worker with the worker Deployment's environment: exit $exit_code"
    cat "$log"
    return 1
  fi
}

if [ -d deploy/k8s ]; then
  check "kubectl kustomize + kubernetes-validate + names + numbers: overlays/dev" render_and_validate dev
  check "kubectl kustomize + kubernetes-validate + names + numbers: overlays/prod" render_and_validate prod
fi
check "checkov: Dockerfile, rendered manifests" checkov_all
check "no secret in any file (checkov's secret scan)" no_secret_in_any_file
if [ -d deploy/k8s ]; then
  check "the dev overlay's environment migrates, serves and works (migrate Job, Deployments)" manifests_configure_the_service
fi

[ "$failures" -eq 0 ]
