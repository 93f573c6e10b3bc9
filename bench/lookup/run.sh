#!/usr/bin/env bash
# Lookup service throughput and latency side by side: slotbandit serve (release, 2 serving
# threads, embedded store with the sample's posteriors, file event log, API key checked, token
# signed, impressions logged) and a minimal Python Thompson-sampling service (FastAPI on uvicorn,
# 2 workers, counts in memory), both answering GET .../decision for 10 banners on loopback,
# driven by wrk with the same script. For each: the maximum throughput (as fast as wrk can), then
# p50/p99 at 80% of that maximum (each connection pauses between requests; the pause is
# calibrated by two short runs). Prints a Markdown table and the ratio.
# Usage: bench/lookup/run.sh   (env: DURATION seconds per run, default 20; CONNECTIONS, default 64;
#        SERVE_THREADS, the service's serving threads, default 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
duration="${DURATION:-20}"
conns="${CONNECTIONS:-64}"
cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
command -v wrk >/dev/null || { echo "run.sh: wrk is required (apt-get install wrk)" >&2; exit 1; }
venv="$cache/bench-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import fastapi, uvicorn' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r bench/requirements.txt
fi
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/slotbandit"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

store="embedded:$work/store.redb"
RUST_LOG=warn "$bin" backfill --input datasets/sample --store "$store" >/dev/null 2>&1
RUST_LOG=warn "$bin" priors --store "$store" >/dev/null 2>&1
key="$("$bin" keys add --store "$store" --tenant ajio --role admin 2>/dev/null)"

RUST_LOG=warn "$bin" serve --store "$store" --log "file:$work/log" --spool-dir "$work/spool" \
  --listen 127.0.0.1:18080 --threads ${SERVE_THREADS:-2} >"$work/serve.out" 2>&1 &
pids+=($!)
(cd bench/lookup && exec "$venv/bin/uvicorn" peer:app --host 127.0.0.1 --port 18081 --workers 2 \
  --log-level warning --no-access-log) >"$work/peer.out" 2>&1 &
pids+=($!)
for port in 18080 18081; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" -w '%{http_code}' | grep -q '200\|404' && break; sleep 0.2; done
done
curl -sf -X POST -H "Authorization: Bearer $key" -H 'content-type: text/csv' \
  --data-binary @datasets/slots/ajio_hero.csv http://127.0.0.1:18080/v1/tenants/ajio/slot-imports >/dev/null

load() { # url delay_ms [seconds] -> "rps p50_ms p99_ms max_ms errors requests"
  SB_KEY="$key" SB_DELAY_MS="$2" wrk -t2 -c"$conns" -d"${3:-$duration}s" \
    -s bench/lookup/wrk_decision.lua "$1" | awk '/^RESULT/ { $1 = ""; print }'
}

# The pause per connection that gives `target` requests/s: a closed loop does
# conns / (pause + latency) requests per second, so each 5 s run at a pause estimates the latency
# and corrects the pause; two rounds land within a few percent of the target.
pause_for() { # url target -> delay_ms (fractional)
  local pause rps
  pause="$(awk -v c="$conns" -v t="$2" 'BEGIN { printf "%.3f", c * 1000 / t }')"
  for _ in 1 2; do
    read -r rps _ < <(load "$1" "$pause" 5)
    pause="$(awk -v c="$conns" -v t="$2" -v p="$pause" -v r="$rps" \
      'BEGIN { d = c * 1000 / t - (c * 1000 / r - p); if (d < 0) d = 0; printf "%.3f", d }')"
  done
  echo "$pause"
}

declare -A max
results=()
for name in slotbandit python; do
  url="http://127.0.0.1:18080"; [ "$name" = python ] && url="http://127.0.0.1:18081"
  load "$url" 0 >/dev/null # warm-up
  read -r rps p50 p99 mx errors n < <(load "$url" 0)
  max[$name]="$rps"
  results+=("| $name | max | $rps | $p50 | $p99 | $mx | $errors / $n |")
  target="$(awk -v r="$rps" 'BEGIN { printf "%d", r * 0.8 }')"
  read -r rps p50 p99 mx errors n < <(load "$url" "$(pause_for "$url" "$target")")
  results+=("| $name | 80% ($target/s asked) | $rps | $p50 | $p99 | $mx | $errors / $n |")
done

echo
echo "| service | load | decisions/s | p50 ms | p99 ms | max ms | errors / requests |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
awk -v a="${max[slotbandit]}" -v b="${max[python]}" \
  'BEGIN { printf "\nslotbandit / python throughput: %.1fx\n", a / b }'
echo "impressions logged by slotbandit: $(curl -s http://127.0.0.1:18080/metrics | awk '/^slotbandit_impressions_logged_total/ { print $2 }')"
