"""Checks the numbers of rendered manifests that must agree with each other:
`python k8s_numbers.py RENDERED.yaml KUSTOMIZATION.yaml`.

- terminationGracePeriodSeconds is longer than the preStop pause plus
  TENANCY_SHUTDOWN_TIMEOUT (the drain), so the service is never killed mid-drain;
- (the HorizontalPodAutoscaler's maxReplicas + the Deployment's maxSurge) x
  (TENANCY_MAX_TOTAL_CONNECTIONS + TENANCY_CONTROL_POOL_SIZE + 1 listening connection),
  plus the migrate Job (its --concurrency + TENANCY_CONTROL_POOL_SIZE + 2) and
  PostgreSQL's reserved connections (3), is within the `max_connections >= N` that the
  base kustomization's comment asks for.
"""

import re
import sys

import yaml

rendered, kustomization = sys.argv[1:]
docs = {d["kind"]: d for d in yaml.safe_load_all(open(rendered, encoding="utf-8")) if d}
config = docs["ConfigMap"]["data"]
pod = docs["Deployment"]["spec"]["template"]["spec"]
(container,) = pod["containers"]
grace = pod["terminationGracePeriodSeconds"]
pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
drain = int(config["TENANCY_SHUTDOWN_TIMEOUT"])
problems = []
if grace <= pause + drain:
    problems.append(f"terminationGracePeriodSeconds {grace} <= preStop {pause} + TENANCY_SHUTDOWN_TIMEOUT {drain}")

control = int(config["TENANCY_CONTROL_POOL_SIZE"])
per_replica = int(config["TENANCY_MAX_TOTAL_CONNECTIONS"]) + control + 1
surge = docs["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
if not isinstance(surge, int):
    problems.append(f"maxSurge {surge!r} is not a number of pods: the connection math cannot count it")
    surge = 0
pods = docs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] + surge
(job,) = docs["Job"]["spec"]["template"]["spec"]["containers"]
args = job.get("args", [])
concurrency = int(args[args.index("--concurrency") + 1]) if "--concurrency" in args else 4
needed = pods * per_replica + concurrency + control + 2 + 3
stated = re.search(r"max_connections >= (\d+)", open(kustomization, encoding="utf-8").read())
if not stated:
    problems.append(f"{kustomization} states no `max_connections >= N`")
elif needed > int(stated.group(1)):
    problems.append(f"the replicas may open {needed} connections, more than the stated max_connections >= {stated.group(1)}")

for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
