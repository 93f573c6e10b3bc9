#!/usr/bin/env bash
# Click-to-posterior-in-store latency at a steady produce rate: a fresh Kafka topic, the
# streaming job following it (`slotbandit stream`, not --stop-at-end), and `slotbandit produce
# --rate` replaying the generator's history into the topic for a while. The job measures, for
# every click it counts, the time from the click's append to the log (the Kafka record
# timestamp, set when the producer sends it) until the epoch holding it is known to be in the
# store, and prints the quantiles when it stops.
#
# Usage: bench/stream/latency.sh [RATE events/s, default 20000] [SECONDS, default 60]
# Environment: SLOTBANDIT_KAFKA (default 127.0.0.1:9092), BENCH_PARTITIONS (default 4),
#              STORE (default a fresh embedded store; e.g. cassandra://127.0.0.1:9042/ks),
#              WORKERS (default 2), EPOCH_MS (default: the job's default, 250).
set -euo pipefail
cd "$(dirname "$0")/../.."
rate="${1:-20000}"
seconds="${2:-60}"
cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
broker="${SLOTBANDIT_KAFKA:-127.0.0.1:9092}"
partitions="${BENCH_PARTITIONS:-4}"
workers="${WORKERS:-2}"
history="$cache/bench-stream/latency-history"
work="$(mktemp -d)"
store="${STORE:-embedded:$work/latency.redb}"
topic="bench-latency-$(date +%s)"
url="kafka://$broker/$topic"
job=""
cleanup() { [ -n "$job" ] && kill "$job" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/slotbandit"
scripts/services/kafka.sh start >/dev/null
events=$((rate * seconds))
if [ ! -f "$history/_truth.json" ] || [ "$(cat "$history/.events" 2>/dev/null)" -lt "$events" ]; then
  rm -rf "$history"
  "$bin" gen --out "$history" --events "$events" --days 30 --seed 12 >&2
  echo "$events" >"$history/.events"
fi

case "$store" in cassandra://*) "$bin" schema apply --store "$store" >&2 ;; esac
# The topic exists (with its partitions) before the job starts reading it.
"$bin" produce --log "$url?partitions=$partitions" --from "$history" --limit 1 >/dev/null 2>&1
epoch_flag=()
[ -n "${EPOCH_MS:-}" ] && epoch_flag=(--epoch-ms "$EPOCH_MS")
RUST_LOG=warn "$bin" stream --log "$url" --store "$store" -w "$workers" "${epoch_flag[@]}" \
  >"$work/stream.out" 2>&1 &
job=$!
sleep 3
echo "producing $events events at $rate/s into $topic ($partitions partitions); job: -w $workers, store $store" >&2
"$bin" produce --log "$url" --from "$history" --limit "$events" --rate "$rate" >&2
sleep 2
kill -TERM "$job"
wait "$job" || true
job=""
cat "$work/stream.out" >&2
line="$(grep '^click to store' "$work/stream.out")" || { echo "latency.sh: the job reported no click latency" >&2; exit 1; }
read -r p50 p99 mx clicks < <(sed -E 's/.*p50 ([0-9]+) ms, p99 ([0-9]+) ms, max ([0-9]+) ms over ([0-9]+) clicks/\1 \2 \3 \4/' <<<"$line")
echo
echo "| store | produce rate /s | workers | epoch ms | clicks | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|---|"
echo "| ${store%%:*} | $rate | $workers | ${EPOCH_MS:-250} | $clicks | $p50 | $p99 | $mx |"
