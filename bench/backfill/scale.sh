#!/usr/bin/env bash
# The backfill at a million arms: slotbandit (2 workers, embedded store) against DuckDB's hourly
# GROUP BY (arm, IST hour) and its all-time GROUP BY arm (2 threads) on the same Parquet,
# alternating, every run one Markdown row (wall s, CPU s, peak RSS MiB, load average). Checks
# once that slotbandit's all-time counts equal DuckDB's on every arm.
# Usage: bench/backfill/scale.sh BINARY [ROUNDS] [OLD_BINARY]
#   OLD_BINARY, when given, is run once per round too (it takes much longer).
#   env: SCALE_EVENTS (impressions, default 16,000,000; 100 slots × 200 cities × 50 banners)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="$(realpath "$1")"; rounds="${2:-3}"; old="${3:+$(realpath "$3")}"
events="${SCALE_EVENTS:-16000000}"
. bench/lib/env.sh
bench_venv duckdb
history="$cache/bench-scale/gen-$events"
if [ ! -f "$history/_truth.json" ]; then
  rm -rf "$history"
  "$bin" gen --out "$history" --events "$events" --days 2 --tenants 50 --cities 200 --banners 50 \
    --seed 1 >&2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

measure() { # round name command... ; prints a result line
  local round="$1" name="$2"; shift 2
  local t="$work/time.txt" load
  load="$(cut -d' ' -f1 /proc/loadavg)"
  /usr/bin/time -f "%e %U %S %M" -o "$t" "$@" >"$work/out.txt" 2>&1 ||
    { cat "$work/out.txt" >&2; exit 1; }
  read -r secs user sys kib <"$t"
  awk -v r="$round" -v n="$name" -v s="$secs" -v c="$(echo "$user + $sys" | bc)" -v k="$kib" \
    -v l="$load" 'BEGIN { printf "| %s | %s | %.2f | %.2f | %.0f | %s |\n", r, n, s, c, k / 1024, l }'
}

echo "history: $history ($(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$history/_truth.json") rows)"
echo
echo "| round | engine | wall s | CPU s | peak RSS MiB | load before |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  rm -f "$work/new.redb"
  measure "$round" "slotbandit -w 2" "$bin" backfill --input "$history" \
    --store "embedded:$work/new.redb" -w 2
  measure "$round" "DuckDB hourly" "$venv/bin/python" bench/backfill/peers.py duckdb-hourly \
    "$history" "$work/hourly.txt"
  measure "$round" "DuckDB all-time" "$venv/bin/python" bench/backfill/peers.py duckdb-all-time \
    "$history" "$work/duckdb.csv"
  if [ -n "$old" ]; then
    rm -f "$work/old.redb"
    measure "$round" "slotbandit -w 2 (old)" "$old" backfill --input "$history" \
      --store "embedded:$work/old.redb" -w 2
    rm -f "$work/old.redb"
  fi
done
echo
echo "store file: $(du -m "$work/new.redb" | cut -f1) MiB; DuckDB hourly rows: $(cat "$work/hourly.txt")"
"$bin" posteriors --store "embedded:$work/new.redb" --format csv | cut -d, -f1-6 >"$work/slotbandit.csv"
if cmp -s "$work/slotbandit.csv" "$work/duckdb.csv"; then
  echo "all-time counts: slotbandit = DuckDB on every arm"
else
  echo "all-time counts differ between slotbandit and DuckDB:" >&2
  diff "$work/slotbandit.csv" "$work/duckdb.csv" | head >&2
  exit 1
fi
