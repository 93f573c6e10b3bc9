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

step "services (real Apache Cassandra and Apache Kafka, from Maven jars)"
for svc in cassandra kafka; do
  # `start` prints SLOTBANDIT_CASSANDRA=… / SLOTBANDIT_KAFKA=… on stdout.
  while IFS= read -r line; do
    [[ "$line" == SLOTBANDIT_*=* ]] && export "${line?}"
  done < <(scripts/services/$svc.sh start)
done
: "${SLOTBANDIT_CASSANDRA:?cassandra.sh start printed no address}" "${SLOTBANDIT_KAFKA:?kafka.sh start printed no address}"
export SLOTBANDIT_REQUIRE_SERVICES=1

step "format and lint"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

step "Rust tests"
cargo test --locked

step "operations: promtool"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
promtool check config deploy/prometheus/prometheus.yml

step "Python tests (clients we did not write)"
export SLOTBANDIT_BIN="$CARGO_TARGET_DIR/debug/slotbandit"
# tests/py/test_chaos.py's short fault schedule (one fault of each kind); scripts/chaos.sh runs the full one.
export SLOTBANDIT_CHAOS=short
cd "$root"
"$SLOTBANDIT_CACHE/venv/bin/python" -m pytest -q tests/py
