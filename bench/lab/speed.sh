#!/usr/bin/env bash
# Simulated decisions per second per core (docs/lab.md, "Speed"): one thread (RAYON_NUM_THREADS=1),
# K = 10 (the default CTRs), one city, 4 runs × 10^6 decisions per policy; decisions / user CPU
# seconds of the single-threaded process, so other work on the machine inflates wall time but
# hardly the figure. Prints the load average with every line.
# Usage: bench/lab/speed.sh [repeats] [slotbandit binary]   (default: 3, a fresh release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats="${1:-3}"
bin="${2:-}"
if [ -z "$bin" ]; then
  source bench/lib/env.sh
  bench_release_copy
fi
out="$(mktemp -d)"
trap 'rm -rf "$out" "${release_dir:-}"' EXIT
runs=4 horizon=1000000
measure() {
  local label="$1" policies="$2"
  shift 2
  for _ in $(seq "$repeats"); do
    local load
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    RAYON_NUM_THREADS=1 /usr/bin/time -o "$out/time" -f '%U' "$bin" simulate "$@" --runs "$runs" \
      --horizon "$horizon" --out "$out" >/dev/null 2>&1
    awk -v l="$label" -v u="$(tail -1 "$out/time")" -v d="$((policies * runs * horizon))" \
      -v load="$load" 'BEGIN { printf "%-16s %5.2f s user  %5.2f M decisions/s/core  load %s\n",
        l, u, d / u / 1e6, load }'
  done
}
measure "ts refresh 1" 1 --policy ts --refresh 1
measure "ts refresh 10^4" 1 --policy ts --refresh 10000
measure "ucb1 + uniform" 2 --policy ucb1,uniform
rm -rf "$out"
