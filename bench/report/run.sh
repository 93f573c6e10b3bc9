#!/usr/bin/env bash
# `slotbandit report -w 2` against DuckDB (2 threads) running the same report as one SQL query
# over the same Parquet history, and DuckDB's scan of the columns the report reads (the physical
# ceiling: nothing joined). Alternating, the first of each round alternating too; every run is
# printed as one Markdown row, then the median ratios. Checks that slotbandit and DuckDB agree on
# every (tenant, slot, group)'s impressions and clicks.
# The history: `slotbandit gen` (IMPRESSIONS over 2 days, 50 tenants × 2 slots × 200 cities ×
# 50 banners, about 1M arms), given a decision-log holdout flag by DuckDB (peer.py holdout);
# both cached under ~/.cache/slotbandit/bench-report. The range is the middle 24 hours, so
# impressions outside it and clicks without their impression are there too.
# Usage: bench/report/run.sh [IMPRESSIONS] [ROUNDS]   (defaults 10,000,000 and 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
events="${1:-10000000}"
rounds="${2:-3}"
. bench/lib/env.sh
bench_venv duckdb
bench_release_build
work="${SLOTBANDIT_BENCH_DIR:-$cache/bench-report}"
mkdir -p "$work"
gen="$work/gen-$events"
history="$work/history-$events"
if [ ! -f "$gen/_truth.json" ]; then
  rm -rf "$gen"
  "$bin" gen --out "$gen" --events "$events" --days 2 --tenants 50 --cities 200 --banners 50 --seed 1 >&2
fi
if [ ! -d "$history" ]; then
  rm -rf "$history.tmp"
  "$venv/bin/python" bench/report/peer.py holdout "$gen" "$history.tmp"
  mv "$history.tmp" "$history"
fi
from=2026-11-01T06:00:00Z
to=2026-11-02T06:00:00Z
rows="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$gen/_truth.json")"

run() { # name out command... ; prints a Markdown row and records the wall time
  local name="$1" out="$2" t="$work/time.txt"; shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$t" "$@" >"$out" 2>"$work/stderr.txt" ||
    { cat "$work/stderr.txt" >&2; exit 1; }
  read -r secs user sys kib <"$t"
  echo "$name $secs" >>"$work/walls.txt"
  awk -v r="$round" -v n="$name" -v s="$secs" -v c="$(echo "$user + $sys" | bc)" -v k="$kib" \
    -v rows="$rows" -v l="$(cut -d' ' -f1 /proc/loadavg)" \
    'BEGIN { printf "| %d | %s | %.2f | %.2f | %.0f | %.0f | %s |\n", r, n, s, c, k / 1024, rows / s, l }'
}
slotbandit() {
  run slotbandit "$work/slotbandit.csv" "$bin" report --input "$history" --from "$from" --to "$to" \
    --format csv -w 2
}
duckdb_report() {
  run duckdb "$work/duckdb.csv" "$venv/bin/python" bench/report/peer.py report "$history" "$from" "$to" /dev/stdout
}
duckdb_scan() {
  run scan /dev/null "$venv/bin/python" bench/report/peer.py scan "$history"
}

echo "history: $rows rows ($events impressions), $(du -sh "$history" | cut -f1) in $(find "$history" -name '*.parquet' | wc -l) files; range $from to $to"
echo "| round | engine | wall s | CPU s (user+sys) | peak RSS MiB | rows/s | load |"
echo "|---|---|---|---|---|---|---|"
rm -f "$work/walls.txt"
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then slotbandit; duckdb_report; else duckdb_report; slotbandit; fi
  duckdb_scan
done

# Every (tenant, slot, group) with impressions, as "tenant,slot,holdout,impressions,clicks".
python3 - "$work/slotbandit.csv" "$work/duckdb.csv" <<'PY'
import csv, sys
ours = []
for r in csv.DictReader(open(sys.argv[1])):
    if r["tenant"] == "*":
        continue
    for group, held in (("ts", "false"), ("holdout", "true")):
        if int(r[f"{group}_impressions"]):
            ours.append(f"{r['tenant']},{r['slot']},{held},{r[f'{group}_impressions']},{r[f'{group}_clicks']}")
theirs = [l.strip() for l in open(sys.argv[2]) if l.strip()]
assert sorted(ours) == sorted(theirs), (len(ours), len(theirs), sorted(set(ours) ^ set(theirs))[:5])
print(f"slotbandit and DuckDB agree on all {len(ours)} (tenant, slot, group) counts")
PY
python3 - "$work/walls.txt" <<'PY'
import statistics, sys
walls = {}
for line in open(sys.argv[1]):
    name, secs = line.split()
    walls.setdefault(name, []).append(float(secs))
m = {name: statistics.median(w) for name, w in walls.items()}
print(f"median wall: slotbandit {m['slotbandit']:.2f} s, DuckDB {m['duckdb']:.2f} s, DuckDB scan "
      f"{m['scan']:.2f} s; slotbandit / DuckDB {m['slotbandit'] / m['duckdb']:.2f}, "
      f"slotbandit / scan {m['slotbandit'] / m['scan']:.2f}")
PY
