#!/usr/bin/env bash
# Rolls out {{k8s_name}}: migrations first, then the service and its job workers.
#   deploy/k8s/rollout.sh prod        (or dev; KUBECTL=... to use another kubectl)
# 1. everything but the two Deployments: namespace, config, secrets, the migrate Job;
# 2. waits for the Job (every tenant migrated; a failure stops here, the old version
#    keeps serving and working);
# 3. the Deployments: new pods become ready one at a time (maxUnavailable 0).
# Migrations must therefore keep the running version working (add columns and tables;
# drop what it uses only in a later release).
set -euo pipefail

overlay=${1:?usage: rollout.sh dev|prod}
kubectl=${KUBECTL:-kubectl}
dir=$(cd "$(dirname "$0")" && pwd)/overlays/$overlay
namespace=$("$kubectl" kustomize "$dir" | sed -nE 's/^  namespace: (.*)$/\1/p' | head -1)

# A finished Job cannot be changed: remove the previous release's.
"$kubectl" -n "$namespace" delete job {{k8s_name}}-migrate --ignore-not-found
"$kubectl" apply -k "$dir" -l 'app.kubernetes.io/component notin (server,worker)'
echo "waiting for the migrations (kubectl -n $namespace logs -f job/{{k8s_name}}-migrate)"
while :; do
  state=$("$kubectl" -n "$namespace" get job {{k8s_name}}-migrate \
    -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
  case $state in
    *Complete*) break ;;
    *Failed*)
      echo "migrations failed; the running version keeps serving:" >&2
      "$kubectl" -n "$namespace" logs "job/{{k8s_name}}-migrate" --tail=50 >&2 || true
      exit 1
      ;;
  esac
  sleep 5
done
"$kubectl" apply -k "$dir"
"$kubectl" -n "$namespace" rollout status deployment/{{k8s_name}} --timeout=600s
"$kubectl" -n "$namespace" rollout status deployment/{{k8s_name}}-worker --timeout=600s
