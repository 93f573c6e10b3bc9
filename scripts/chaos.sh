#!/usr/bin/env bash
# The full chaos run (docs/reliability.md): tests/py/test_chaos.py's schedule with N seeded faults
# spread over M minutes, on its own 3-node Cassandra and 3-broker Kafka, ending with the recount's
# one line. The short schedule (one fault of each kind) runs in scripts/test.sh's Python step.
#
#   scripts/chaos.sh [--seed N] [--faults N] [--minutes M]
#
# Defaults: a random seed (printed, so a run can be repeated), 12 faults, 15 minutes. The binary
# is SLOTBANDIT_BIN, else $CARGO_TARGET_DIR/debug/slotbandit (scripts/test.sh builds it there).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/chaos.sh [--seed N] [--faults N (at least 6)] [--minutes M]" >&2; exit 2; }

seed="" faults=12 minutes=15
while (($#)); do
  case "$1" in
  --seed) seed="${2:?}"; shift 2 ;;
  --faults) faults="${2:?}"; shift 2 ;;
  --minutes) minutes="${2:?}"; shift 2 ;;
  *) usage ;;
  esac
done
[[ -z "$seed" || "$seed" =~ ^[0-9]+$ ]] || usage
[[ "$faults" =~ ^[0-9]+$ ]] && ((faults >= 6)) || usage
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || usage

cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
export SLOTBANDIT_BIN="${SLOTBANDIT_BIN:-${CARGO_TARGET_DIR:-$cache/target}/debug/slotbandit}"
[[ -x "$SLOTBANDIT_BIN" ]] || { echo "chaos.sh: no binary at $SLOTBANDIT_BIN (set SLOTBANDIT_BIN or build it)" >&2; exit 1; }

export SLOTBANDIT_CLUSTER_TESTS=1 SLOTBANDIT_CHAOS=full SLOTBANDIT_CHAOS_SEED="$seed" \
  SLOTBANDIT_CHAOS_FAULTS="$faults" SLOTBANDIT_CHAOS_MINUTES="$minutes"
exec "$cache/venv/bin/python" -m pytest -q -s -rxs tests/py/test_chaos.py -k test_chaos_schedule
