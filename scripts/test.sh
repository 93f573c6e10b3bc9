#!/usr/bin/env bash
# The one command that runs every test: installs what it needs, builds, lints, and runs the Rust
# and Python suites. Builds go to a persistent CARGO_TARGET_DIR outside the checkout so that
# repeated runs (and CI on this machine) do not rebuild the world.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export SLOTBANDIT_CACHE="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SLOTBANDIT_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "install"
scripts/install.sh

step "format and lint"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

step "Rust tests"
cargo test --locked

step "Python tests (clients we did not write)"
export SLOTBANDIT_BIN="$CARGO_TARGET_DIR/debug/slotbandit"
cd "$root"
"$SLOTBANDIT_CACHE/venv/bin/python" -m pytest -q tests/py
