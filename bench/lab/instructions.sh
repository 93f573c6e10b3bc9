#!/usr/bin/env bash
# Instructions per simulated decision of Thompson sampling (docs/lab.md, "Speed"), by callgrind,
# which the load on the machine does not change: one run of `simulate --policy ts --refresh R` at
# T = 10^6 minus one at T = 10^3 (the fixed cost: start-up, plots), divided by 999,000.
# Usage: bench/lab/instructions.sh [slotbandit binary] [refresh …]   (default: a fresh release
# build; refresh 1 and 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-}"
if [ -z "$bin" ]; then
  source bench/lib/env.sh
  bench_release_copy
fi
shift || true
refreshes=("$@")
[ ${#refreshes[@]} -gt 0 ] || refreshes=(1 10000)
out="$(mktemp -d)"
trap 'rm -rf "$out" "${release_dir:-}"' EXIT
instructions() {
  RAYON_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out/callgrind" "$bin" \
    simulate --policy ts --refresh "$1" --runs 1 --horizon "$2" --out "$out" 2>&1 >/dev/null |
    awk '/Collected/ { gsub(",", "", $4); print $4 }'
}
for r in "${refreshes[@]}"; do
  long="$(instructions "$r" 1000000)"
  short="$(instructions "$r" 1000)"
  echo "ts refresh $r: $(( (long - short) / 999000 )) instructions per decision (T = 10^6)"
done
