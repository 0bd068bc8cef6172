#!/usr/bin/env python3
"""Checks that a generated project's docs name only what the project has.

    python3 ci/doc_names.py PROJECT

Reads every `code span` of the project's README.md, docs/*.md and deploy/k8s/README.md
(rendered for the project's answers) and checks three kinds of names against the
project itself:
  - a file path (`src/db/pool.rs`, `tests/api/schema.rs`, `migrations/control`) exists;
    `tests/api/x.rs::name` also names a function of that file;
  - a Rust path (`Tenancy::active_tenant`, `db::migrate::pending_in`) has every segment
    as an identifier of the code (src/, tests/, build.rs);
  - a snake_case name (`problem_details`, `tenant_id`) is a word of the code, the
    migrations or the deployment files.
Prints one line per name that does not exist; exits 1 if there is any.
"""

import pathlib
import re
import sys

project = pathlib.Path(sys.argv[1])
docs = [project / "README.md", *sorted((project / "docs").glob("*.md"))]
if (project / "deploy/k8s/README.md").exists():
    docs.append(project / "deploy/k8s/README.md")


def words(paths):
    found = set()
    for path in paths:
        if path.is_file():
            found.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path.read_text(errors="replace")))
    return found


def files(*patterns):
    return [p for pattern in patterns for p in project.glob(pattern) if p.is_file()]


code = words(files("src/**/*.rs", "tests/**/*.rs", "build.rs"))
everything = code | words(
    files(
        "migrations/**/*.sql",
        "deploy/**/*",
        ".env.example",
        "Cargo.toml",
        "Dockerfile",
        "docker-compose.yml",
        ".github/**/*",
    )
)

PATH = re.compile(r"(src|tests|migrations|deploy|docs)/[A-Za-z0-9_./-]*[A-Za-z0-9_]")
RUST_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)+(\(\))?")
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+(\(\))?")

# Names the docs give to what another strategy would have (the strategies' comparison),
# and settings of PgBouncer's that a project without deployment files does not hold.
ELSEWHERE = {
    "tenancy_data",
    "tenant_databases",
    "max_client_conn",
    "default_pool_size",
    "server_login_retry",
}

mistakes = []
for doc in docs:
    text = doc.read_text()
    # Fenced blocks hold commands and output, not names to check.
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for span in sorted(set(re.findall(r"`([^`\n]+)`", text))):
        where = f"{doc.relative_to(project)}: `{span}`"
        if PATH.fullmatch(span.split("::")[0]):
            path, _, name = span.partition("::")
            if not (project / path).exists():
                mistakes.append(f"{where}: no such file in the project")
            elif name and not re.search(rf"\bfn {re.escape(name)}\b", (project / path).read_text()):
                mistakes.append(f"{where}: no function {name} in {path}")
        elif RUST_PATH.fullmatch(span):
            missing = [s for s in span.removesuffix("()").split("::") if s not in code]
            if missing:
                mistakes.append(f"{where}: {', '.join(missing)} is in no source file")
        elif SNAKE.fullmatch(span):
            if span.removesuffix("()") not in everything | ELSEWHERE:
                mistakes.append(f"{where}: named nowhere in the code, migrations or deployment")

for mistake in mistakes:
    print(mistake)
sys.exit(1 if mistakes else 0)
