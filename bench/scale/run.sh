#!/usr/bin/env bash
# The 1M-arm case end to end, each step timed, one table at the end:
# 1. gen: 16M impressions over 2 days, 50 tenants × 2 slots × 200 cities × 50 banners (1M arms),
#    cached under ~/.cache/slotbandit/bench-scale/<parameters>/gen and reused;
# 2. backfill -w 2 into an embedded store: wall, peak RSS, rows/s, beside DuckDB (2 threads) over
#    the same Parquet (bench/backfill/peers.py: hourly and all-time counts), all-time counts
#    checked equal on every arm;
# 3. priors: wall;
# 4. serve on that store: start to /readyz, every slot imported (one POST per slot, timed), idle
#    CPU with no traffic, RSS and bytes per arm (against the same service on an empty store),
#    wrk at the maximum and at ~80% of it over every (tenant, slot, city) at random, with each
#    tenant's key (bench/lib/http.sh, bench/lookup/wrk_decision.lua);
# 5. click to decision: through `slotbandit demo` on the same history (the stream job and the
#    service in one process: an embedded redb file opens in one process only), the time from
#    posting a click until the slot's posteriors show it (bench/scale/click_latency.py).
# Raw results: results.tsv and results.json under the run folder (printed at the end). The store,
# with every slot imported, is left with targets.tsv and banners for
# `STORE_SCALE=<that folder> bench/lookup/run.sh`.
#
# Usage: bench/scale/run.sh
# env: EVENTS (16000000), DAYS (2), TENANTS (50), CITIES (200), BANNERS (50): the history;
#      DURATION seconds per wrk run (20), WARMUP (5), CONNECTIONS (64), SERVE_THREADS (2),
#      IDLE seconds of idle-CPU sampling (25), CLICKS samples of click latency (30),
#      SKIP_CLICKS=1 to leave step 5 out.
# Smoke run (under a minute or two):
#   EVENTS=200000 TENANTS=5 CITIES=20 BANNERS=10 DURATION=3 WARMUP=1 IDLE=3 CLICKS=5 bench/scale/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/lib/http.sh
source bench/lib/http.sh
events="${EVENTS:-16000000}"
days="${DAYS:-2}"
tenants="${TENANTS:-50}"
cities="${CITIES:-200}"
banners="${BANNERS:-50}"
duration="${DURATION:-20}"
conns="${CONNECTIONS:-64}"
idle="${IDLE:-25}"
clicks="${CLICKS:-30}"
cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

need wrk "apt-get install wrk"
need curl "apt-get install curl"
need python3 "apt-get install python3"
[ -x /usr/bin/time ] || die "/usr/bin/time is required (apt-get install time)"
venv="$cache/bench-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r bench/requirements.txt
fi
"$venv/bin/python" -c 'import duckdb' || die "duckdb is missing from $venv"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/slotbandit"
[ -x "$bin" ] || die "no release binary at $bin"

base="$cache/bench-scale/e$events-d$days-t$tenants-c$cities-b$banners-s1"
gen="$base/gen"
store_file="$base/store.redb"
store="embedded:$store_file"
work="$base/run-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$work"
results="$work/results.tsv"
printf 'step\tmetric\tvalue\tpeer_or_ceiling\tratio\tnote\n' >"$results"
record() { # step metric value [peer] [ratio] [note]
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" "${5:-}" "${6:-}" >>"$results"
  echo "  $1: $2 = $3${4:+ (peer: $4)}${5:+, ratio $5}${6:+ ($6)}" >&2
}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The run folder keeps the results and logs, not the bulky copies (the store stays in $base).
  rm -rf "$work/demo.redb" "$work/demo-tmp" "$work/empty.redb" "$work"/*-log "$work"/*-spool
}
trap cleanup EXIT
trap 'exit 130' INT TERM
stop() { # pid: stops one process this script started and waits for it
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

timed() { # name command... : runs it under /usr/bin/time -v; sets wall_s and rss_mib
  local out="$work/$1.time"
  /usr/bin/time -v -o "$out" "${@:2}" >"$work/$1.out" 2>&1 \
    || { tail -20 "$work/$1.out" >&2; die "$1 failed (log: $work/$1.out)"; }
  wall_s="$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0
    for (i = 1; i <= n; i++) s = s * 60 + t[i]; printf "%.2f", s }' "$out")"
  rss_mib="$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$out")"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
now() { date +%s.%N; }

echo "bench/scale: $events impressions, $days days, $tenants tenants × 2 slots × $cities cities × $banners banners; run folder $work" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# 1. gen (cached by parameters)
if [ -f "$gen/_truth.json" ] && [ -f "$gen/_slots.csv" ]; then
  record gen wall_s "cached" "" "" "$gen"
else
  rm -rf "$gen"
  timed gen "$bin" gen --out "$gen" --events "$events" --days "$days" --tenants "$tenants" \
    --cities "$cities" --banners "$banners" --seed 1
  record gen wall_s "$wall_s"
  record gen peak_rss_mib "$rss_mib"
fi
read -r rows arms < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["rows"], len(d["arms"]))' "$gen/_truth.json")
record gen rows "$rows"
record gen arms "$arms"
# (tenant, slot, city) of every arm, for wrk and the click samples; the banners count for bench/lookup.
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
for t in sorted({(a["tenant"], a["slot"], a["city"]) for a in d["arms"]}):
    print("\t".join(t))' "$gen/_truth.json" >"$base/targets.tsv"
echo "$banners" >"$base/banners"

# 2. backfill beside DuckDB
rm -f "$store_file"
timed backfill "$bin" backfill --input "$gen" --store "$store" -w 2
sb_wall="$wall_s"; sb_rss="$rss_mib"
timed duckdb "$venv/bin/python" bench/backfill/peers.py duckdb "$gen" "$work/duckdb.csv"
dk_wall="$wall_s"; dk_rss="$rss_mib"
record backfill wall_s "$sb_wall" "DuckDB $dk_wall" "$(ratio "$dk_wall" "$sb_wall")×" "DuckDB time / slotbandit time"
record backfill rows_per_s "$(awk -v r="$rows" -v s="$sb_wall" 'BEGIN { printf "%.0f", r / s }')" \
  "DuckDB $(awk -v r="$rows" -v s="$dk_wall" 'BEGIN { printf "%.0f", r / s }')" "$(ratio "$dk_wall" "$sb_wall")×"
record backfill peak_rss_mib "$sb_rss" "DuckDB $dk_rss" "$(ratio "$sb_rss" "$dk_rss")×" "slotbandit / DuckDB"
"$bin" posteriors --store "$store" --format csv | cut -d, -f1-6 >"$work/slotbandit.csv"
store_arms="$(($(wc -l <"$work/slotbandit.csv") - 1))"
record backfill store_arms "$store_arms" "" "" "arms with counts in the store (of $arms in the generator's world)"
if cmp -s "$work/slotbandit.csv" "$work/duckdb.csv"; then
  record backfill all_time_counts "equal to DuckDB's on all $store_arms arms"
  rm -f "$work/slotbandit.csv" "$work/duckdb.csv"
else
  diff "$work/slotbandit.csv" "$work/duckdb.csv" | head >&2
  die "all-time counts differ between slotbandit and DuckDB ($work/slotbandit.csv, $work/duckdb.csv)"
fi

# 3. priors
timed priors "$bin" priors --store "$store"
record priors wall_s "$wall_s"

# 4. serve
# A key per tenant (before serve: the redb file opens in one process only).
: >"$work/keys.tsv"
for tenant in $(tail -n +2 "$gen/_slots.csv" | cut -d, -f1 | sort -u); do
  printf '%s\t%s\n' "$tenant" "$(RUST_LOG=warn "$bin" keys add --store "$store" --tenant "$tenant" --role admin 2>/dev/null)" >>"$work/keys.tsv"
done
declare -A keys
while IFS=$'\t' read -r tenant key; do keys[$tenant]="$key"; done <"$work/keys.tsv"
# One CSV per (tenant, slot), the banners valid for a year from now (the history's are over).
mkdir -p "$work/slots"
valid_to="$(LC_ALL=C date -u -d '+365 days' '+%d-%b-%y 23:59:59')"
awk -F, -v OFS=, -v dir="$work/slots" -v to="$valid_to" 'NR == 1 { header = $0; next }
  { f = dir "/" $1 "__" $2 ".csv"; if (!(f in seen)) { print header > f; seen[f] = 1 }; $6 = to; print > f }' "$gen/_slots.csv"
nslots="$(find "$work/slots" -name '*.csv' | wc -l)"

serve() { # store-url port log-name -> starts serve, sets serve_pid
  RUST_LOG=warn "$bin" serve --store "$1" --log "file:$work/$3-log" --spool-dir "$work/$3-spool" \
    --listen "127.0.0.1:$2" --threads "${SERVE_THREADS:-2}" >"$work/$3.out" 2>&1 &
  serve_pid=$!
  pids+=("$serve_pid")
}
# The same service on an empty store: the baseline of bytes per arm.
serve "embedded:$work/empty.redb" 18091 serve-empty
wait_http http://127.0.0.1:18091/readyz 60 "$serve_pid" || { cat "$work/serve-empty.out" >&2; exit 1; }
sleep 2
rss_empty="$(rss_kib "$serve_pid")"
stop "$serve_pid"
record serve rss_empty_store_mib "$((rss_empty / 1024))"

t0="$(now)"
serve "$store" 18090 serve
wait_http http://127.0.0.1:18090/readyz 900 "$serve_pid" || { cat "$work/serve.out" >&2; exit 1; }
record serve start_to_ready_s "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')" "" "" \
  "no slot configured yet (restart_to_ready_s below: with every slot)"
pid="$serve_pid"

: >"$work/imports.tsv"
t0="$(now)"
for f in "$work"/slots/*.csv; do
  name="${f##*/}"; name="${name%.csv}"; tenant="${name%%__*}"; slot="${name#*__}"
  read -r code secs < <(curl -s -o "$work/import.out" -w '%{http_code} %{time_total}\n' -X POST \
    -H "Authorization: Bearer ${keys[$tenant]}" -H 'content-type: text/csv' --data-binary "@$f" \
    "http://127.0.0.1:18090/v1/tenants/$tenant/slot-imports")
  [ "$code" = 200 ] || die "importing $tenant/$slot answered $code: $(cat "$work/import.out")"
  printf '%s\t%s\t%s\n' "$tenant" "$slot" "$secs" >>"$work/imports.tsv"
done
imported="$(now)"
deadline=$((SECONDS + 120))
until [ "$(curl -s http://127.0.0.1:18090/readyz | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache_slots"])')" -ge "$nslots" ]; do
  [ "$SECONDS" -lt "$deadline" ] || die "the service's cache did not show the $nslots imported slots within 120 s"
  sleep 0.05
done
in_cache="$(now)"
read -r n p50 p90 mx total < <(sort -g -k3 "$work/imports.tsv" | awk -F'\t' '{ v[NR] = $3 * 1000; s += $3 }
  END { i = int(NR * 0.9 + 0.5); if (i < 1) i = 1
        printf "%d %.1f %.1f %.1f %.2f\n", NR, v[int((NR + 1) / 2)], v[i], v[NR], s }')
record serve slot_imports "$n"
record serve slot_import_p50_ms "$p50"
record serve slot_import_p90_ms "$p90"
record serve slot_import_max_ms "$mx"
record serve slot_imports_total_s "$total"
record serve all_slots_in_cache_after_s "$(awk -v a="$t0" -v b="$in_cache" 'BEGIN { printf "%.2f", b - a }')"
record serve last_import_to_cache_ms "$(awk -v a="$imported" -v b="$in_cache" 'BEGIN { printf "%.0f", (b - a) * 1000 }')"

sleep 2
clk="$(getconf CLK_TCK)"
c0="$(cpu_ticks "$pid")"; s0="$(now)"
sleep "$idle"
c1="$(cpu_ticks "$pid")"; s1="$(now)"
record serve idle_cpu_pct_of_core "$(awk -v c="$((c1 - c0))" -v k="$clk" -v a="$s0" -v b="$s1" \
  'BEGIN { printf "%.2f", 100 * c / k / (b - a) }')"
rss_loaded="$(rss_kib "$pid")"
record serve rss_loaded_mib "$((rss_loaded / 1024))"
record serve bytes_per_arm "$(awk -v l="$rss_loaded" -v e="$rss_empty" -v a="$store_arms" 'BEGIN { printf "%.0f", (l - e) * 1024 / a }')" \
  "" "" "(RSS loaded - RSS on an empty store) / the store's $store_arms arms"

while IFS=$'\t' read -r tenant slot city; do
  printf '/v1/tenants/%s/slots/%s/decision?city=%s %s\n' "$tenant" "$slot" "$city" "${keys[$tenant]}"
done <"$base/targets.tsv" >"$work/wrk-targets"
export SB_TARGETS="$work/wrk-targets"
read -r first_path first_key <"$SB_TARGETS"
curl -sf -o /dev/null -H "Authorization: Bearer $first_key" "http://127.0.0.1:18090$first_path" \
  || die "no decision for $first_path"
{ read -r _ rps p50 p99 mxl errors requests; read -r asked rps80 p50_80 p99_80 mx80 errors80 requests80; } \
  < <(max_and_80 http://127.0.0.1:18090)
[ -n "${requests80:-}" ] || die "the wrk runs failed"
record serve max_decisions_per_s "$rps" "" "" "wrk -t2 -c$conns, ${duration} s; python peer and nginx ceiling: STORE_SCALE=$base bench/lookup/run.sh"
record serve max_p50_ms "$p50"
record serve max_p99_ms "$p99"
record serve max_latency_ms "$mxl"
record serve max_errors "$errors / $requests"
record serve at80_asked_per_s "$asked"
record serve at80_decisions_per_s "$rps80" "" "" "$(ratio "$rps80" "$rps") of the max"
record serve at80_p50_ms "$p50_80"
record serve at80_p99_ms "$p99_80"
record serve at80_max_latency_ms "$mx80"
record serve at80_errors "$errors80 / $requests80"
record serve rss_after_wrk_mib "$(($(rss_kib "$pid") / 1024))"
stop "$pid"
# A restart on the loaded store (every slot configured): what a deploy or a crash costs.
t0="$(now)"
serve "$store" 18090 serve-restart
wait_http http://127.0.0.1:18090/readyz 900 "$serve_pid" || { cat "$work/serve-restart.out" >&2; exit 1; }
t1="$(now)"
ready_slots="$(curl -s http://127.0.0.1:18090/readyz | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache_slots"])')"
record serve restart_to_ready_s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" "" "" \
  "serve restarted on the store with every slot; $ready_slots slots in the cache at the first 200"
sleep 2
rss_restart="$(rss_kib "$serve_pid")"
record serve rss_after_restart_mib "$((rss_restart / 1024))"
record serve bytes_per_arm_after_restart "$(awk -v l="$rss_restart" -v e="$rss_empty" -v a="$store_arms" 'BEGIN { printf "%.0f", (l - e) * 1024 / a }')"
stop "$serve_pid"

# 5. click to decision, through the demo (stream job + service in one process)
if [ "${SKIP_CLICKS:-0}" = 1 ]; then
  record click_to_decision visible_p50_ms "skipped" "" "" "SKIP_CLICKS=1"
else
  mkdir -p "$work/demo-tmp"
  t0="$(now)"
  (cd "$work" && TMPDIR="$work/demo-tmp" RUST_LOG=warn exec "$bin" demo --input "$gen" \
    --store "$work/demo.redb" --listen 127.0.0.1:18092) >"$work/demo.out" 2>&1 &
  demo_pid=$!
  pids+=("$demo_pid")
  deadline=$((SECONDS + ${DEMO_TIMEOUT:-1800}))
  until grep -q 'lookup service listens on' "$work/demo.out"; do
    kill -0 "$demo_pid" 2>/dev/null || { tail -20 "$work/demo.out" >&2; die "slotbandit demo exited"; }
    [ "$SECONDS" -lt "$deadline" ] || die "slotbandit demo did not start its service within ${DEMO_TIMEOUT:-1800} s"
    sleep 0.2
  done
  wait_http http://127.0.0.1:18092/readyz 120 "$demo_pid" || exit 1
  record click_to_decision demo_start_s "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')" "" "" \
    "slotbandit demo --input: backfill, priors, its table over every (tenant, slot, city)"
  sed -n 's/^  \([a-z0-9_-]*\): demo page http.*#key=\(.*\)$/\1\t\2/p' "$work/demo.out" >"$work/demo-keys.tsv"
  [ -s "$work/demo-keys.tsv" ] || die "no keys in the demo's output ($work/demo.out)"
  read -r vp50 vp90 vmax ap50 < <("$venv/bin/python" bench/scale/click_latency.py http://127.0.0.1:18092 \
    "$work/demo-keys.tsv" "$base/targets.tsv" "$clicks" "$work/clicks.json" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["visible_p50_ms"], d["visible_p90_ms"], d["visible_max_ms"], d["accepted_p50_ms"])') \
    || die "click_latency.py failed"
  record click_to_decision visible_p50_ms "$vp50" "" "" "over $clicks clicks, from the POST to the first posteriors read that shows it"
  record click_to_decision visible_p90_ms "$vp90"
  record click_to_decision visible_max_ms "$vmax"
  record click_to_decision click_accepted_p50_ms "$ap50"
  stop "$demo_pid"
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$results" "$work/results.json" <<'EOF'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
json.dump(rows, open(sys.argv[2], "w"), indent=1)
print("| step | metric | value | peer / ceiling | ratio | note |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['step']} | {r['metric']} | {r['value']} | {r['peer_or_ceiling'] or '—'} | {r['ratio'] or '—'} | {r['note']} |")
EOF
echo
echo "raw results: $results, $work/results.json"
echo "the store with every slot imported: STORE_SCALE=$base bench/lookup/run.sh"
