#!/usr/bin/env bash
# Two builds of slotbandit side by side, alternating, so that the host's drift falls on both:
# the backfill of generated history (wall s, CPU s, peak RSS) and the lookup service's maximum
# decisions/s under wrk (embedded store with the sample's posteriors, file log, 2 serving
# threads). Every run is printed as one Markdown row; nothing is averaged away.
# Usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
#   env: AB_EVENTS (impressions of the generated history, default 50,000,000), AB_SECONDS (wrk
#   seconds per lookup run, default 10), CONNECTIONS (wrk connections, default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]" >&2; exit 2; }
old="$(realpath "$1")"; new="$(realpath "$2")"; rounds="${3:-3}"
for b in "$old" "$new"; do [ -x "$b" ] || { echo "ab.sh: $b is not an executable" >&2; exit 2; }; done
command -v wrk >/dev/null || { echo "ab.sh: wrk is required (apt-get install wrk)" >&2; exit 1; }
events="${AB_EVENTS:-50000000}"
seconds="${AB_SECONDS:-10}"
conns="${CONNECTIONS:-64}"
cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
work="$(mktemp -d)"
serve_pid=""
cleanup() { [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

history="$cache/bench-backfill/gen-$events"
if [ ! -f "$history/_truth.json" ]; then
  rm -rf "$history"
  "$new" gen --out "$history" --events "$events" --days 30 --tenants 3 --cities 12 --banners 10 --seed 1 >&2
fi

backfill() { # binary -> "wall cpu rss_mib"
  local t="$work/time.txt"
  rm -f "$work/ab.redb"
  /usr/bin/time -f "%e %U %S %M" -o "$t" "$1" backfill --input "$history" \
    --store "embedded:$work/ab.redb" -w 2 >/dev/null 2>&1
  awk '{ printf "%.2f %.2f %.0f\n", $1, $2 + $3, $4 / 1024 }' "$t"
}

lookup() { # binary -> "decisions/s p99"
  local dir="$work/serve" key
  rm -rf "$dir"; mkdir -p "$dir"
  RUST_LOG=warn "$1" backfill --input datasets/sample --store "embedded:$dir/s.redb" >/dev/null 2>&1
  key="$("$1" keys add --store "embedded:$dir/s.redb" --tenant ajio --role admin 2>/dev/null)"
  RUST_LOG=warn "$1" serve --store "embedded:$dir/s.redb" --log "file:$dir/log" \
    --spool-dir "$dir/spool" --listen 127.0.0.1:18090 --threads 2 >"$dir/serve.out" 2>&1 &
  serve_pid=$!
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18090/healthz && break; sleep 0.2; done
  curl -sf -X POST -H "Authorization: Bearer $key" -H 'content-type: text/csv' \
    --data-binary @datasets/slots/ajio_hero.csv \
    http://127.0.0.1:18090/v1/tenants/ajio/slot-imports >/dev/null
  SB_KEY="$key" wrk -t2 -c"$conns" -d2s -s bench/lookup/wrk_decision.lua http://127.0.0.1:18090 >/dev/null
  SB_KEY="$key" wrk -t2 -c"$conns" -d"${seconds}s" -s bench/lookup/wrk_decision.lua \
    http://127.0.0.1:18090 | awk '/^RESULT/ { print $2, $4 }'
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=""
}

echo "old: $old"
echo "new: $new"
echo "history: $history ($(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$history/_truth.json") rows)"
echo
echo "| round | build | backfill wall s | backfill CPU s | peak RSS MiB | decisions/s | p99 ms | load |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$rounds"); do
  # Alternate which build goes first, so neither always runs in the same minute of a round.
  if ((r % 2)); then order=("old $old" "new $new"); else order=("new $new" "old $old"); fi
  for pair in "${order[@]}"; do
    name="${pair%% *}"; bin="${pair#* }"
    read -r wall cpu rss < <(backfill "$bin")
    read -r rps p99 < <(lookup "$bin")
    echo "| $r | $name | $wall | $cpu | $rss | $rps | $p99 | $(cut -d' ' -f1 /proc/loadavg) |"
  done
done
