#!/usr/bin/env bash
# Backfill throughput side by side: slotbandit (timely/differential, 2 workers), DuckDB (2
# threads) and PySpark local[2], the same aggregation over the same generated Parquet. Reports
# rows/s, wall time, CPU seconds (user+sys of the process and the children it waited for)
# and peak RSS, checks that all three agree on every arm's all-time counts,
# and runs slotbandit at a fifth of the size too, to show whether its memory stays flat.
# Usage: bench/backfill/run.sh [IMPRESSIONS] (default 50,000,000; rows ≈ 1.03 × impressions)
set -euo pipefail
cd "$(dirname "$0")/../.."
events="${1:-50000000}"
. bench/lib/env.sh
bench_venv duckdb pyspark
bench_release_build
work="${SLOTBANDIT_BENCH_DIR:-$cache/bench-backfill}"
mkdir -p "$work"

generate() { # impressions -> folder
  local n="$1" dir="$work/gen-$1"
  if [ ! -f "$dir/_truth.json" ]; then
    rm -rf "$dir"
    "$bin" gen --out "$dir" --events "$n" --days 30 --tenants 3 --cities 12 --banners 10 --seed 1 >&2
  fi
  echo "$dir"
}

measure() { # name rows command... ; prints a result line
  local name="$1" rows="$2"; shift 2
  local t="$work/time.txt"
  /usr/bin/time -f "%e %M %U %S" -o "$t" "$@" >/dev/null
  read -r secs kib user sys <"$t"
  local cpu
  cpu="$(echo "$user + $sys" | bc)"
  # PySpark's JVM is not a child the driver waits for, so neither its CPU nor its memory counts.
  case "$name" in PySpark*) cpu="n/a (JVM not counted)" ;; esac
  awk -v n="$name" -v r="$rows" -v s="$secs" -v k="$kib" -v c="$cpu" \
    'BEGIN { printf "| %s | %d | %.2f | %.0f | %s | %.0f |\n", n, r, s, r / s, c, k / 1024 }'
}

big="$(generate "$events")"
small="$(generate $((events / 5)))"
rows_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$1/_truth.json"; }
big_rows="$(rows_of "$big")"; small_rows="$(rows_of "$small")"

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| engine | rows | wall s | rows/s | CPU s (user+sys) | peak RSS MiB |"
echo "|---|---|---|---|---|---|"
store="$work/bench.redb"
rm -f "$store"
measure "slotbandit -w 2 ($((events / 5)) impressions)" "$small_rows" "$bin" backfill --input "$small" --store "embedded:$store" -w 2
rm -f "$store"
measure "slotbandit -w 2" "$big_rows" "$bin" backfill --input "$big" --store "embedded:$store" -w 2
"$bin" posteriors --store "embedded:$store" --format csv | cut -d, -f1-6 >"$work/slotbandit.csv"
measure "DuckDB (2 threads)" "$big_rows" "$venv/bin/python" bench/backfill/peers.py duckdb "$big" "$work/duckdb.csv"
measure "PySpark local[2]" "$big_rows" "$venv/bin/python" bench/backfill/peers.py pyspark "$big" "$work/pyspark.csv"
for peer in duckdb pyspark; do
  if cmp -s "$work/slotbandit.csv" "$work/$peer.csv"; then
    echo "all-time counts: slotbandit = $peer on every arm"
  else
    echo "all-time counts differ between slotbandit and $peer:" >&2
    diff "$work/slotbandit.csv" "$work/$peer.csv" | head >&2
    exit 1
  fi
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
