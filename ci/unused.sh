#!/usr/bin/env bash
# Finds unused code in a generated project: `bash ci/unused.sh PROJECT_DIR`.
#
# A library's `pub` items count as used even when nothing calls them, so neither the
# compiler nor clippy reports what a combination does not use. This check compiles the
# whole program as one crate in which nothing is public: the library's modules made
# private, `main` and the integration tests moved inside it (paths rewritten, never run),
# with dead code, unused imports and every other warning as errors. What neither the
# service nor its tests use then fails the check, with the compiler's message.
set -euo pipefail

project=$(cd "$1" && pwd)
crate=$(sed -nE 's/^name = "([^"]+)"/\1/p' "$project/Cargo.toml" | head -1)
crate_ident=${crate//-/_}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tar -C "$project" --exclude=./target --exclude=./tests/api -cf - . | tar -C "$work" -xf -

rewrite() { # file: the crate's own paths, seen from inside it (the tests name it `svc`)
  # shellcheck disable=SC2016 # `$crate` is Rust, not a shell expansion
  sed -i -E \
    -e "s/\b${crate_ident}::/crate::/g" \
    -e "/^extern crate ${crate_ident} as svc;/d" \
    -e 's/\bsvc::/crate::/g' \
    -e 's/\$crate::helpers::/$crate::api_tests::helpers::/g' \
    -e 's/\bcrate::(helpers|cluster|tls|isolation|pgbouncer|pooler|database|servers|moves)::/crate::api_tests::\1::/g' \
    -e 's/env!\("CARGO_BIN_EXE_[^"]*"\)/"unused-check: never run"/g' \
    "$1"
}

# The library: private modules, so that `pub` no longer means "used".
sed -i -E 's/^pub mod /mod /' "$work/src/lib.rs"

# main: a private module whose `main` is a root of the program (`allow(dead_code)` makes
# it one), as the binary's `main` is.
mv "$work/src/main.rs" "$work/src/entry.rs"
rewrite "$work/src/entry.rs"
sed -i -E 's/^fn main\(\)/#[allow(dead_code)]\npub(crate) fn main()/' "$work/src/entry.rs"
printf '\nmod entry;\n' >>"$work/src/lib.rs"

# The integration tests: a test-only module of the library.
mkdir -p "$work/src/api_tests"
cp "$project"/tests/api/*.rs "$work/src/api_tests/"
mv "$work/src/api_tests/main.rs" "$work/src/api_tests/mod.rs"
for file in "$work"/src/api_tests/*.rs; do rewrite "$file"; done
printf '\n#[cfg(test)]\nmod api_tests;\n' >>"$work/src/lib.rs"

cd "$work"
# The package has no binary now: drop an explicit [[bin]] if there is one.
sed -i -E '/^\[\[bin\]\]/,/^$/d' Cargo.toml
cargo clippy --locked --quiet --tests -- -D warnings
