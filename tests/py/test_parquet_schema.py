"""pyarrow, a reader we did not write, reads `slotbandit gen` output with the documented schema."""
import datetime as dt
import json
import os
import subprocess
import zoneinfo

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

BIN = os.environ.get("SLOTBANDIT_BIN", "target/debug/slotbandit")
IST = zoneinfo.ZoneInfo("Asia/Kolkata")
NAME = r"^[a-z0-9_-]{1,64}$"

EXPECTED = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("slot", pa.string(), nullable=False),
        pa.field("city", pa.string(), nullable=False),
        pa.field("banner", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("customer_id", pa.string()),
        pa.field("referrer", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("policy", pa.string()),
        pa.field("policy_version", pa.int64()),
        pa.field("holdout", pa.bool_()),
        pa.field("propensity", pa.float64()),
        pa.field("propensity_error", pa.float64()),
        pa.field("rank", pa.int64()),
    ]
)
EVENTS = int(os.environ.get("SLOTBANDIT_GEN_EVENTS", "300000"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "data"
    run = subprocess.run(
        [BIN, "gen", "--out", str(out), "--events", str(EVENTS), "--days", "4", "--seed", "11"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "rows/s" in run.stdout
    return out


def test_schema_is_the_documented_one(generated):
    files = sorted(generated.rglob("*.parquet"))
    assert files
    for f in files:
        schema = pq.read_schema(f)
        assert schema.remove_metadata().equals(EXPECTED), f"{f}: {schema}"


def test_the_folder_reads_as_one_parquet_dataset(generated):
    """gen's side files start with `_`, so readers that take a folder as a dataset skip them."""
    side_files = sorted(p.name for p in generated.iterdir() if p.is_file())
    assert side_files == ["_slots.csv", "_truth.json"]
    truth = json.loads((generated / "_truth.json").read_text())
    assert ds.dataset(generated, format="parquet").count_rows() == truth["rows"]
    assert pq.read_table(generated).num_rows == truth["rows"]


def test_rows_follow_the_contract(generated):
    table = ds.dataset(generated, format="parquet", partitioning="hive").to_table()
    truth = json.loads((generated / "_truth.json").read_text())
    assert table.num_rows == truth["rows"]
    kinds = pc.value_counts(table["kind"]).to_pylist()
    counts = {k["values"]: k["counts"] for k in kinds}
    assert counts == {"impression": EVENTS, "click": truth["clicks"]}
    for col in ["tenant", "slot", "city", "banner"]:
        assert pc.all(pc.match_substring_regex(table[col], NAME)).as_py(), col
    assert pc.count_distinct(table["event_id"]).as_py() == table.num_rows
    # dt= is the IST date of ts.
    for f in sorted(generated.rglob("*.parquet")):
        dt_dir = f.parent.name.removeprefix("dt=")
        ts = pq.read_table(f, columns=["ts"])["ts"]
        lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
        assert lo.astimezone(IST).date().isoformat() == dt_dir
        assert hi.astimezone(IST).date().isoformat() == dt_dir
    # every click points at an impression of the same arm, earlier in time
    imps = table.filter(pc.equal(table["kind"], "impression"))
    clicks = table.filter(pc.equal(table["kind"], "click"))
    joined = clicks.join(
        imps.select(["request_id", "banner", "city", "ts"]).rename_columns(
            ["request_id", "i_banner", "i_city", "i_ts"]
        ),
        "request_id",
    )
    assert joined.num_rows == clicks.num_rows
    assert pc.all(pc.equal(joined["banner"], joined["i_banner"])).as_py()
    assert pc.all(pc.greater(joined["ts"], joined["i_ts"])).as_py()


def test_traffic_is_diurnal_in_ist(generated):
    table = ds.dataset(generated, format="parquet", partitioning="hive", exclude_invalid_files=True).to_table(columns=["ts", "city"])
    hours = [t.astimezone(IST).hour for t in table["ts"].to_pylist()[:: max(1, table.num_rows // 50000)]]
    night = sum(1 for h in hours if 2 <= h < 5)
    evening = sum(1 for h in hours if 19 <= h < 22)
    assert evening > 5 * night, (night, evening)
    cities = pc.value_counts(table["city"]).to_pylist()
    top = max(c["counts"] for c in cities)
    low = min(c["counts"] for c in cities)
    assert top > 4 * low, "city traffic is skewed"
