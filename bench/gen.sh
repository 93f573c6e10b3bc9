#!/usr/bin/env bash
# Generator throughput at scale, and a check that pyarrow (a reader we did not write) reads the
# result with the documented schema. Usage: bench/gen.sh [EVENTS] (default 10,000,000 impressions).
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-10000000}"
export SLOTBANDIT_CACHE="${SLOTBANDIT_CACHE:-$HOME/.cache/slotbandit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SLOTBANDIT_CACHE/target}"
scripts/install.sh
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/slotbandit"
out="$(mktemp -d)/gen"
trap 'rm -rf "$(dirname "$out")"' EXIT
/usr/bin/time -f "peak RSS %M KiB, %e s wall, %U s user" \
  "$bin" gen --out "$out" --events "$events" --days 30 --seed 1
du -sh "$out"
SLOTBANDIT_GEN_DIR="$out" "$SLOTBANDIT_CACHE/venv/bin/python" - <<'PY'
import os, time, pathlib
import pyarrow.dataset as ds, pyarrow.parquet as pq
import pyarrow as pa
root = pathlib.Path(os.environ["SLOTBANDIT_GEN_DIR"])
files = sorted(root.rglob("*.parquet"))
expected = [("event_id", "string"), ("kind", "string"), ("tenant", "string"), ("slot", "string"),
            ("city", "string"), ("banner", "string"), ("ts", "timestamp[us, tz=UTC]"),
            ("customer_id", "string"), ("referrer", "string"), ("request_id", "string")]
for f in files:
    got = [(fld.name, str(fld.type)) for fld in pq.read_schema(f)]
    assert got == expected, (f, got)
t = time.time()
n = ds.dataset(root, format="parquet", exclude_invalid_files=True).count_rows()
print(f"pyarrow: {len(files)} files, documented schema in all, {n} rows counted in {time.time() - t:.1f} s")
PY
