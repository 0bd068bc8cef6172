"""The environment a workload of rendered manifests gets: `python k8s_env.py FILE KIND`.

Reads the output of `kubectl kustomize` (FILE), finds the one workload of KIND
(`Deployment` or `Job`; `Deployment:worker` for the one whose
`app.kubernetes.io/component` label is `worker`), and prints its container's
environment as KEY=VALUE lines: its
`env` values and every key of the ConfigMaps and Secrets its `envFrom` names (a Secret's
data decoded). Fails when a referenced ConfigMap or Secret is not in the output.
"""

import base64
import sys

import yaml


def main(path, kind):
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    kind, _, component = kind.partition(":")
    workloads = [
        d
        for d in docs
        if d["kind"] == kind
        and component in ("", d["metadata"].get("labels", {}).get("app.kubernetes.io/component"))
    ]
    if len(workloads) != 1:
        sys.exit(f"expected one {kind}, found {len(workloads)}")
    (container,) = workloads[0]["spec"]["template"]["spec"]["containers"]
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            found = by_name.get(("ConfigMap", name))
            if found is None:
                sys.exit(f"{kind} reads ConfigMap {name}, which the manifests do not define")
            env.update(found.get("data", {}))
        else:
            name = source["secretRef"]["name"]
            found = by_name.get(("Secret", name))
            if found is None:
                sys.exit(f"{kind} reads Secret {name}, which the manifests do not define")
            for key, value in found.get("data", {}).items():
                env[key] = base64.b64decode(value).decode()
            env.update(found.get("stringData", {}))
    for item in container.get("env", []):
        env[item["name"]] = item["value"]
    for key, value in sorted(env.items()):
        print(f"{key}={value.strip()}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
