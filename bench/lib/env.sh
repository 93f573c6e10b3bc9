# Shell functions shared by the bench scripts (sourced, not run).

# bench_venv MODULE...: sets `cache` and `venv` (the bench's Python environment under the cache),
# creating the environment from bench/requirements.txt unless it imports every MODULE already.
bench_venv() {
  cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
  venv="$cache/bench-venv"
  local modules
  modules="$(IFS=,; echo "$*")"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import $modules" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r bench/requirements.txt
  fi
}

# bench_release_build: builds slotbandit (release) in the cache's target folder unless
# CARGO_TARGET_DIR names another, and sets `bin` to it.
bench_release_build() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
  cargo build --release --quiet
  bin="$CARGO_TARGET_DIR/release/slotbandit"
}
