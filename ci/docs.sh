#!/usr/bin/env bash
# Checks that the docs name only what exists: `bash ci/docs.sh`.
#   - every test they cite (`tests/api/<file>.rs::<name>`, `<module>::tests::<name>`) is a
#     function of that file of the template;
#   - every `TENANCY_*` variable they name is read by the service (a key in some feature's
#     `KEYS`), is one of the test suite's, or is a former name the service reports;
#   - the generated README's configuration table lists every key the service reads;
#   - every file the repository's docs name in backticks exists.
# Prints one line per mistake; exits non-zero if there is any.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
docs=(README.md docs/*.md template/README.md template/docs/*.md)
mistakes=0
mistake() { echo "$*"; mistakes=$((mistakes + 1)); }

# Tests cited by file.
while IFS= read -r cite; do
  file=template/${cite%%::*} name=${cite##*::}
  grep -qE "fn $name\b" "$file" 2>/dev/null || mistake "$cite: no such test in $file"
done < <(grep -ohE 'tests/api/[a-z_]+\.rs::[a-z0-9_]+' "${docs[@]}" | sort -u)

# Unit tests cited by module path (`db::settings::tests::name`).
while IFS= read -r cite; do
  module=${cite%%::tests::*} name=${cite##*::}
  path=template/src/${module//:://}
  found=no
  for file in "$path.rs" "$path/mod.rs"; do
    grep -qE "fn $name\b" "$file" 2>/dev/null && found=yes
  done
  [ $found = yes ] || mistake "$cite: no such test in $path.rs"
done < <(grep -ohE '\b[a-z_]+(::[a-z_]+)*::tests::[a-z0-9_]+' "${docs[@]}" | sort -u)

# The keys the service reads: ("key", Some(..)) or ("key", None) in a KEYS list, outside
# test modules.
mapfile -t keys < <(find template/src -name '*.rs' -exec awk '/^#\[cfg\(test\)\]/ { exit } { print }' {} \; |
  grep -oE '\("[a-z_]+", (Some|None)' | sed -E 's/\("([a-z_]+)".*/\1/' | sort -u)
# Variables of the reference guide the docs list as not implemented yet, with the issue
# that will implement them (none now).
planned=()
known() { # VAR
  local key
  key=$(tr '[:upper:]' '[:lower:]' <<<"${1#TENANCY_}")
  case $1 in TENANCY_TEST_*) return 0 ;; esac
  # Here-strings, not pipes: with pipefail, grep -q leaving early would fail the printf.
  grep -qx "$1" <<<"$(printf '%s\n' "${planned[@]}")" && return 0
  grep -qx "$key" <<<"$(printf '%s\n' "${keys[@]}")" && return 0
  # Other libraries' names the service recognises and reports (config.rs, OTHER_NAMES:
  # a line `"key",` in that table).
  awk '/^const OTHER_NAMES/,/^\];/' template/src/config.rs | grep -qE "^ *\(?\"$key\","
}
while IFS= read -r var; do
  known "$var" || mistake "$var: named in the docs, read nowhere"
done < <(grep -ohE 'TENANCY_[A-Z0-9_]*[A-Z0-9]\b' "${docs[@]}" | sort -u)

for key in "${keys[@]}"; do
  var=TENANCY_$(tr '[:lower:]' '[:upper:]' <<<"$key")
  grep -q "$var" template/README.md || mistake "$var: read by the service, missing from template/README.md"
done

# Files the repository's docs name in backticks exist (src/, tests/, migrations/: the
# template's). The generated docs are checked against each generated project
# (ci/doc_names.py, from ci/test.sh).
# shellcheck disable=SC2016 # the backticks are Markdown's, matched literally
while IFS= read -r path; do
  found=no
  for candidate in "$path" "template/$path" "$path.liquid" "template/$path.liquid"; do
    [ -e "$candidate" ] && found=yes
  done
  [ $found = yes ] || mistake "$path: named in the docs, no such file"
done < <(grep -ohE '`(template/)?(src|tests|migrations|ci|hooks|docs)/[A-Za-z0-9_./-]*[A-Za-z0-9_]`' README.md docs/*.md |
  tr -d '`' | sort -u)

[ $mistakes -eq 0 ] || { echo "$mistakes mistakes in the docs"; exit 1; }
