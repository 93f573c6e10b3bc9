#!/usr/bin/env bash
# Stream catch-up side by side on one pre-filled Kafka topic: Kafka's own consumer benchmark
# (org.apache.kafka.tools.ConsumerPerformance, the ceiling: it only fetches bytes), our reader
# alone (`slotbandit consume`: fetch, copy, decode and validate every event), and the streaming
# job catching up into a store (`slotbandit stream`, when the binary has it).
#
# Usage: bench/stream/run.sh [IMPRESSIONS] (default 20,000,000; rows ≈ 1.03 × impressions)
# Environment: SLOTBANDIT_KAFKA (default 127.0.0.1:9092), BENCH_PARTITIONS (default 4),
#              SLOTBANDIT_BENCH_DIR (default ~/.cache/slotbandit/bench-stream),
#              BENCH_CUSTOMER_HISTORY=0 skips the (slow, redb-bound) run with the customer history.
# The history and the topic are made once and reused by later runs (the topic is named after
# the size; `scripts/services/kafka.sh reset` or deleting the topic starts over).
set -euo pipefail
cd "$(dirname "$0")/../.."
events="${1:-20000000}"
cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
broker="${SLOTBANDIT_KAFKA:-127.0.0.1:9092}"
partitions="${BENCH_PARTITIONS:-4}"
work="${SLOTBANDIT_BENCH_DIR:-$cache/bench-stream}"
topic="bench-stream-$events-p$partitions"
url="kafka://$broker/$topic"
mkdir -p "$work"

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/slotbandit"
scripts/services/kafka.sh start >/dev/null

# 1. History: the generator's Parquet (reused).
history="$work/history-$events"
if [ ! -f "$history/_truth.json" ]; then
  rm -rf "$history"
  "$bin" gen --out "$history" --events "$events" --days 30 --seed 11 >&2
fi
rows="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'])" "$history/_truth.json")"

# 2. Pre-fill: `slotbandit produce` replays the Parquet as keyed event JSON (idempotent
#    producer, acks=all). A marker records a completed fill so reruns skip it.
marker="$work/$topic.filled"
if [ "$(cat "$marker" 2>/dev/null)" != "$rows" ]; then
  # A fill that did not finish (a broker restart fails the producer) is discarded whole.
  scripts/services/kafka.sh run-class org.apache.kafka.tools.TopicCommand --bootstrap-server "$broker" \
    --delete --if-exists --topic "$topic" >&2
  while scripts/services/kafka.sh run-class org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$broker" --list 2>/dev/null | grep -qx "$topic"; do sleep 1; done
  echo "pre-filling $topic with $rows events ($partitions partitions)" >&2
  /usr/bin/time -f "%e %M" -o "$work/time.txt" \
    "$bin" produce --log "$url?partitions=$partitions" --from "$history" --batch 20000 >&2
  read -r secs kib <"$work/time.txt"
  awk -v r="$rows" -v s="$secs" -v k="$kib" \
    'BEGIN { printf "pre-fill: %d events in %.1f s (%.0f events/s, peak RSS %.0f MiB)\n", r, s, r / s, k / 1024 }' |
    tee "$work/prefill.txt" >&2
  echo "$rows" >"$marker"
fi

# 3. The ceiling: Kafka's consumer benchmark on the same topic. It joins a consumer group first;
#    its fetch columns leave the join out, and are what the table reports.
#    CPU seconds (user + sys, whole process) are reported too: on a shared machine they say
#    more than wall time.
SLOTBANDIT_KAFKA_TOOL_HEAP=1g /usr/bin/time -f "%e %M %U %S" -o "$work/time.txt" \
  scripts/services/kafka.sh run-class org.apache.kafka.tools.ConsumerPerformance \
  --bootstrap-server "$broker" --topic "$topic" --num-records "$rows" --timeout 120000 \
  --group "bench-stream-$$" >"$work/perf.txt"
cat "$work/perf.txt" >&2
# start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
# rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
read -r perf_msgs perf_ms ceiling < <(awk -F', *' 'END { print $5, $8, $10 }' "$work/perf.txt")
read -r _ kib user sys <"$work/time.txt"
ceiling_cpu="$(awk -v m="$perf_msgs" -v u="$user" -v s="$sys" 'BEGIN { printf "%.0f", m / (u + s) }')"

echo "| reader | events | wall s | events/s | / ceiling | CPU s | events per CPU s | / ceiling | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
awk -v m="$perf_msgs" -v ms="$perf_ms" -v c="$ceiling" -v u="$user" -v s="$sys" -v cc="$ceiling_cpu" -v k="$kib" \
  'BEGIN { printf "| kafka ConsumerPerformance (the ceiling; fetch time) | %d | %.2f | %.0f | 1.00 | %.1f | %.0f | 1.00 | %.0f |\n", m, ms / 1000, c, u + s, cc, k / 1024 }'

measure() { # name command... ; the command prints "... (N records/s)" or "N messages/s"
  local name="$1"; shift
  /usr/bin/time -f "%e %M %U %S" -o "$work/time.txt" "$@" >"$work/out.txt"
  read -r secs kib user sys <"$work/time.txt"
  local rate
  rate="$(grep -oE '[0-9]+ (messages|records)/s' "$work/out.txt" | head -n 1 | cut -d' ' -f1)"
  cat "$work/out.txt" >&2
  awk -v n="$name" -v r="$rows" -v s="$secs" -v k="$kib" -v rate="$rate" -v c="$ceiling" \
    -v u="$user" -v sy="$sys" -v cc="$ceiling_cpu" \
    'BEGIN { printf "| %s | %d | %.2f | %.0f | %.2f | %.1f | %.0f | %.2f | %.0f |\n", n, r, s, rate, rate / c, u + sy, r / (u + sy), r / (u + sy) / cc, k / 1024 }'
}

# 4. Our reader alone: reads to the end offsets, decoding and validating every event.
measure "slotbandit consume (reader + JSON decode)" "$bin" consume --log "$url"

# 5. The streaming job catching up into a fresh embedded store: reads to the end offsets seen
#    at start, counts every event exactly once, writes posteriors and applied offsets per epoch.
#    Every generated event carries a customer ID, so the default job also writes all 20M events
#    to the customer history; the counting alone is measured with --no-customer-events.
for workers in 1 2; do
  rm -f "$work/stream.redb"
  measure "slotbandit stream -w $workers --no-customer-events (into redb)" \
    "$bin" stream --log "$url" --store "embedded:$work/stream.redb" -w "$workers" --stop-at-end \
    --no-customer-events
done
if [ "${BENCH_CUSTOMER_HISTORY:-1}" = 1 ]; then
  rm -f "$work/stream.redb"
  measure "slotbandit stream -w 2 (into redb, with the customer history)" \
    "$bin" stream --log "$url" --store "embedded:$work/stream.redb" -w 2 --stop-at-end
  rm -f "$work/stream.redb"
fi
