#!/usr/bin/env bash
# The sink side by side: the same backfill (release build, 2 workers) into the embedded redb
# store and into Cassandra (scripts/services/cassandra.sh, 127.0.0.1:9042 unless
# SLOTBANDIT_CASSANDRA says otherwise). Reports for each: whole-job rows/s, the shard batches and
# rows the sink wrote, the sink's time (summed over the workers) and its share of the job, and
# shards/s and rows/s per second of sink time. Checks that both stores hold the same posteriors.
# The stores take turns, RUNS times each (default 2), so that the machine's noise falls on both.
# Usage: bench/sink/run.sh [IMPRESSIONS] (default 10,000,000; 30 days, 3 tenants, 12 cities,
# 10 banners: 36 shards)
set -euo pipefail
cd "$(dirname "$0")/../.."
events="${1:-10000000}"
workers=2
runs="${RUNS:-2}"
cache="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
node="${SLOTBANDIT_CASSANDRA:-127.0.0.1:9042}"
keyspace="sb_bench_sink"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/slotbandit"
work="${SLOTBANDIT_BENCH_DIR:-$cache/bench-sink}"
mkdir -p "$work"
data="$work/gen-$events"
if [ ! -f "$data/_truth.json" ]; then
  rm -rf "$data"
  "$bin" gen --out "$data" --events "$events" --days 30 --tenants 3 --cities 12 --banners 10 --seed 1 >&2
fi
scripts/services/cassandra.sh status >/dev/null ||
  { echo "Cassandra does not answer on $node: scripts/services/cassandra.sh start" >&2; exit 1; }
cassandra="cassandra://$node/$keyspace"
"$bin" schema apply --store "$cassandra" >&2
embedded="embedded:$work/bench.redb"
rm -f "$work/bench.redb"

echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)"
echo
echo "| store | rows | job s | job rows/s | epochs | shard batches | rows written | sink s (sum of $workers workers) | sink share | shards/s | rows written/s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for _ in $(seq "$runs"); do for store in "$embedded" "$cassandra"; do
  out="$("$bin" backfill --input "$data" --store "$store" -w "$workers" 2>/dev/null)"
  # backfill: R rows in S s (X rows/s) into STORE
  # sink: E epochs, B shard batches, W rows written in T s (P% of the run)
  awk -v name="${store%%:*}" -v workers="$workers" '
    /^backfill:/ { rows = $2; secs = $5 }
    /^sink:/ { epochs = $2; batches = $4; written = $7; sink = $11 }
    END {
      share = 100 * sink / workers / secs
      printf "| %s | %d | %.2f | %.0f | %d | %d | %d | %.2f | %.1f%% of each worker | %.0f | %.0f |\n",
        name, rows, secs, rows / secs, epochs, batches, written, sink, share,
        batches / sink, written / sink
    }' <<<"$out"
done; done
echo
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
for store in "$embedded" "$cassandra"; do
  "$bin" posteriors --store "$store" --format csv >"$work/${store%%:*}.csv"
done
if cmp -s "$work/embedded.csv" "$work/cassandra.csv"; then
  echo "posteriors: Cassandra = embedded on all $(($(wc -l <"$work/embedded.csv") - 1)) arms"
else
  echo "posteriors differ between the stores" >&2
  exit 1
fi
