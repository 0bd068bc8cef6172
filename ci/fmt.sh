#!/usr/bin/env bash
# Formats the template's Rust files with rustfmt without losing their Liquid: generates
# each combination in ci/matrix.txt, runs `cargo fmt` on it and applies rustfmt's changes
# to the template files as a patch. Files a patch cannot reach are reported; fix them by
# hand. Formatting must not depend on the project name (ci/test.sh checks three others):
# the tests name the crate `svc` (tests/api/main.rs), and src/main.rs keeps its
# `use {{crate_name}}::...` imports in a group of their own.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=ci/lib.sh
source "$root/ci/lib.sh"
ensure_cargo_generate

status=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  # shellcheck disable=SC2086 # the matrix line is a list of key=value words
  project=$(generate "$root" acme-api $line)
  original=$(mktemp -d)
  cp -r "$project/src" "$project/tests" "$original/"
  (cd "$project" && cargo fmt)
  while IFS= read -r file; do
    rel=${file#"$original"/}
    if ! diff -q "$file" "$project/$rel" >/dev/null; then
      target="$root/template/$rel"
      if diff -u "$file" "$project/$rel" | patch --quiet --forward --reject-file=- "$target" >/dev/null; then
        echo "formatted template/$rel"
      elif ! grep -q '{%' "$target" && ! grep -oE '\{\{ *[a-z_-]+ *\}\}' "$target" | grep -qvE '\{\{(project-name|crate_name)\}\}'; then
        # Its only Liquid is the project or crate name: put the names back.
        sed -e 's/acme-api/{{project-name}}/g' -e 's/\bacme_api\b/{{crate_name}}/g' "$project/$rel" >"$target"
        echo "formatted template/$rel (names restored)"
      else
        echo "could not patch template/$rel: format it by hand" >&2
        status=1
      fi
    fi
  done < <(find "$original" -name '*.rs')
  rm -rf "$original" "$(dirname "$project")"
done <"$root/ci/matrix.txt"
find "$root/template" -name '*.orig' -delete
exit $status
