"""Checks that rendered manifests use names the Kubernetes API server accepts:
`python k8s_names.py RENDERED.yaml`. The schemas kubernetes-validate checks against do not
encode these rules, so a project name with '_' or of too many characters would pass them
and be refused at `kubectl apply`.

- Namespace names and container names are DNS labels; Service names are RFC 1035 labels
  (they start with a letter); a Job's name is at most 63 characters (it becomes a label);
- every other object's name, and every name a workload refers to (ServiceAccount,
  ConfigMap, Secret), is a DNS subdomain;
- label values are at most 63 characters of letters, digits, '-', '_' and '.', starting
  and ending with a letter or digit.
"""

import re
import sys

import yaml

LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
RFC1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")

RULES = {
    LABEL: "lowercase letters, digits and '-'",
    RFC1035: "lowercase letters, digits and '-', starting with a letter",
    SUBDOMAIN: "lowercase letters, digits, '-' and '.'",
    LABEL_VALUE: "letters, digits, '-', '_' and '.'",
}

problems = []


def check(what, value, pattern, limit):
    if not isinstance(value, str) or len(value) > limit or not pattern.match(value):
        problems.append(f"{what}: {value!r} is not a valid name here: at most {limit} characters, {RULES[pattern]}")


def walk(node, where):
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}"
            if key in ("labels", "matchLabels") and isinstance(value, dict):
                for label, text in value.items():
                    check(f"{here}.{label}", str(text), LABEL_VALUE, 63)
            elif key in ("serviceAccountName",):
                check(here, value, SUBDOMAIN, 253)
            elif key in ("configMapRef", "secretRef", "configMapKeyRef", "secretKeyRef") and isinstance(value, dict):
                check(f"{here}.name", value.get("name"), SUBDOMAIN, 253)
            elif key in ("containers", "initContainers") and isinstance(value, list):
                for i, container in enumerate(value):
                    check(f"{here}[{i}].name", container.get("name"), LABEL, 63)
            walk(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            walk(item, f"{where}[{i}]")


for doc in yaml.safe_load_all(open(sys.argv[1], encoding="utf-8")):
    if not doc:
        continue
    kind, metadata = doc["kind"], doc.get("metadata", {})
    name = metadata.get("name")
    if kind == "Namespace":
        check(f"{kind} name", name, LABEL, 63)
    elif kind == "Service":
        check(f"{kind} name", name, RFC1035, 63)
    elif kind == "Job":
        check(f"{kind} name", name, SUBDOMAIN, 63)
    else:
        check(f"{kind} name", name, SUBDOMAIN, 253)
    if "namespace" in metadata:
        check(f"{kind} {name} namespace", metadata["namespace"], LABEL, 63)
    walk(doc, f"{kind} {name}")

for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
