"""Checks the numbers of rendered manifests that must agree with each other:
`python k8s_numbers.py RENDERED.yaml KUSTOMIZATION.yaml`.

- each Deployment's terminationGracePeriodSeconds is longer than its preStop pause plus
  TENANCY_SHUTDOWN_TIMEOUT (the drain), so no pod is killed mid-drain;
- the sum over the Deployments of (pods: the HorizontalPodAutoscaler's maxReplicas, or
  `replicas`, + maxSurge) x (TENANCY_MAX_TOTAL_CONNECTIONS + TENANCY_CONTROL_POOL_SIZE + 1
  listening connection, each read from the container's `env` or else the ConfigMap),
  plus the migrate Job (its --concurrency + TENANCY_CONTROL_POOL_SIZE + 2) and
  PostgreSQL's reserved connections (3), is within the `max_connections >= N` that the
  base kustomization's comment asks for.
"""

import re
import sys

import yaml

rendered, kustomization = sys.argv[1:]
all_docs = [d for d in yaml.safe_load_all(open(rendered, encoding="utf-8")) if d]
docs = {d["kind"]: d for d in all_docs}
config = docs["ConfigMap"]["data"]
problems = []


def setting(container, name):
    """A setting of a container: its own `env` value, else the ConfigMap's."""
    for item in container.get("env", []):
        if item["name"] == name:
            return int(item["value"])
    return int(config[name])


# Every Deployment: the grace period covers the preStop pause and the drain, and its
# pods' connections at most, with the rollout's extra pod: the server's replicas are the
# HorizontalPodAutoscaler's maxReplicas, the others' their `replicas`.
pods_connections = 0
for deployment in (d for d in all_docs if d["kind"] == "Deployment"):
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    grace = pod["terminationGracePeriodSeconds"]
    pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = setting(container, "TENANCY_SHUTDOWN_TIMEOUT")
    if grace <= pause + drain:
        problems.append(f"{name}: terminationGracePeriodSeconds {grace} <= preStop {pause} + TENANCY_SHUTDOWN_TIMEOUT {drain}")
    per_pod = setting(container, "TENANCY_MAX_TOTAL_CONNECTIONS") + setting(container, "TENANCY_CONTROL_POOL_SIZE") + 1
    surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    if not isinstance(surge, int):
        problems.append(f"{name}: maxSurge {surge!r} is not a number of pods: the connection math cannot count it")
        surge = 0
    scaled = [h for h in all_docs if h["kind"] == "HorizontalPodAutoscaler" and h["spec"]["scaleTargetRef"]["name"] == name]
    replicas = scaled[0]["spec"]["maxReplicas"] if scaled else deployment["spec"].get("replicas", 1)
    pods_connections += (replicas + surge) * per_pod

control = int(config["TENANCY_CONTROL_POOL_SIZE"])
(job,) = docs["Job"]["spec"]["template"]["spec"]["containers"]
args = job.get("args", [])
concurrency = int(args[args.index("--concurrency") + 1]) if "--concurrency" in args else 4
needed = pods_connections + concurrency + control + 2 + 3
stated = re.search(r"max_connections >= (\d+)", open(kustomization, encoding="utf-8").read())
if not stated:
    problems.append(f"{kustomization} states no `max_connections >= N`")
elif needed > int(stated.group(1)):
    problems.append(f"the pods may open {needed} connections, more than the stated max_connections >= {stated.group(1)}")

for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
