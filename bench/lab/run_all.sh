#!/usr/bin/env bash
# Reproduces every table and plot of docs/lab.md into docs/lab/<experiment>/ with a release build.
# Usage: bench/lab/run_all.sh [experiment …]   (default: all; names are the .toml files here)
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/lib/env.sh
bench_release_copy
"$bin" simulate --help >/dev/null 2>&1 || {
  echo "run_all.sh: $CARGO_TARGET_DIR/release/slotbandit was replaced by another checkout's build; rerun" >&2
  exit 1
}
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
  experiments=(chapelle_li_eps002 chapelle_li_eps001 refresh_eps002 refresh_eps001 sharing coldstart
    newbanner robust robust_hetero nonstationary drift)
fi
for e in "${experiments[@]}"; do
  echo "== $e" >&2
  "$bin" simulate --config "bench/lab/$e.toml" --out "docs/lab/$e"
done
