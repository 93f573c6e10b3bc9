# Shell functions shared by the bench scripts (sourced, not run).
# shellcheck shell=bash

bench_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# bench_venv MODULE...: sets `cache` and `venv` (the bench's Python environment under the cache),
# creating the environment from bench/requirements.txt unless it imports every MODULE already;
# fails unless it does afterwards.
bench_venv() {
  cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
  venv="$cache/bench-venv"
  local modules
  modules="$(IFS=,; echo "$*")"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import $modules" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$bench_lib_dir/../requirements.txt"
  fi
  "$venv/bin/python" -c "import $modules" || { echo "${0##*/}: $modules missing from $venv" >&2; exit 1; }
}

# bench_release_build: builds slotbandit (release) in the cache's target folder unless
# CARGO_TARGET_DIR names another, and sets `bin` to it.
bench_release_build() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}/target}"
  cargo build --release --quiet
  bin="$CARGO_TARGET_DIR/release/slotbandit"
  [ -x "$bin" ] || { echo "${0##*/}: no release binary at $bin" >&2; exit 1; }
}

# bench_release_copy: bench_release_build, then sets `bin` to a private copy of the binary (the
# target folder may be shared with other checkouts), removed when the script exits.
bench_release_copy() {
  bench_release_build
  release_dir="$(mktemp -d)"
  trap 'rm -rf "$release_dir"' EXIT
  cp "$bin" "$release_dir/slotbandit"
  bin="$release_dir/slotbandit"
}
