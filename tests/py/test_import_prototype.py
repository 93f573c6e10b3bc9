"""The Python cassandra-driver writes a keyspace the way the prototype (a Flask app on this driver)
did, `slotbandit import-prototype` imports it, and pyarrow, a reader we did not write, reads the
output folder as one Parquet dataset with the documented schema and true UTC times."""
import datetime as dt
import os
import subprocess
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from test_parquet_schema import EXPECTED, NAME

BIN = os.environ.get("SLOTBANDIT_BIN", "target/debug/slotbandit")
NODE = os.environ.get("SLOTBANDIT_CASSANDRA", "")
SHIFT = dt.timedelta(seconds=19800)

if not NODE:
    if os.environ.get("SLOTBANDIT_REQUIRE_SERVICES") == "1":
        raise RuntimeError("SLOTBANDIT_CASSANDRA is not set but SLOTBANDIT_REQUIRE_SERVICES=1")
    pytest.skip("SLOTBANDIT_CASSANDRA is not set (scripts/services/ starts Cassandra)", allow_module_level=True)

from cassandra.cluster import Cluster  # noqa: E402  (only when a node is there)
from cassandra.util import uuid_from_time  # noqa: E402

T0 = dt.datetime(2026, 11, 20, 17, 0, tzinfo=dt.timezone.utc)
CITIES = ["Pune", "pune", "Mumbai", "delhi"]
ROWS = [
    # (true UTC time, city, banner, clicked, customer, referrer)
    (T0 + dt.timedelta(minutes=23 * i, microseconds=i), CITIES[i % 4], f"b0{i % 3 + 1}",
     i % 5 == 4, "c-7" if i % 5 == 4 else "-1", "ads" if i % 5 == 4 else "")
    for i in range(120)
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    host, port = NODE.rsplit(":", 1)
    cluster = Cluster([host], port=int(port))
    session = cluster.connect()
    keyspace = f"sbt_pyproto_{os.getpid()}_{time.time_ns() % 10**9}"
    session.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(
        f"CREATE TABLE {keyspace}.bannerclickstream (platform text, slotname text, operationdate timeuuid, "
        "location text, bannerid text, clicked boolean, createddate float, customerid text, adreferrer text, "
        "PRIMARY KEY ((platform, slotname), operationdate, location)) WITH CLUSTERING ORDER BY (operationdate DESC, location ASC)")
    session.execute(
        f"CREATE TABLE {keyspace}.slotconfiguration (platform text, slotname text, validto bigint, imagekey text, "
        "imagename text, validfrom bigint, datemodified timeuuid, PRIMARY KEY ((platform, slotname), validto, imagekey)) "
        "WITH CLUSTERING ORDER BY (validto DESC, imagekey ASC)")
    insert = session.prepare(
        f"INSERT INTO {keyspace}.bannerclickstream (platform, slotname, operationdate, location, bannerid, clicked, "
        "createddate, customerid, adreferrer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    for ts, city, banner, clicked, customer, referrer in ROWS:
        shifted = ts + SHIFT
        session.execute(insert, ("ajio", "hero", uuid_from_time(shifted), city, banner, clicked,
                                 shifted.timestamp(), customer, referrer))
    session.execute(
        f"INSERT INTO {keyspace}.slotconfiguration (platform, slotname, validto, imagekey, imagename, validfrom) "
        "VALUES ('ajio', 'hero', %s, 'b01', 'b01.png', %s)",
        (int((T0 + dt.timedelta(days=30) + SHIFT).timestamp()), int((T0 - dt.timedelta(days=30) + SHIFT).timestamp())))
    out = tmp_path_factory.mktemp("import") / "data"
    try:
        run = subprocess.run([BIN, "import-prototype", "--from", f"cassandra://{NODE}/{keyspace}", "--out", str(out)],
                             capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
        assert run.returncode == 0, run.stderr
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        cluster.shutdown()
    return out


def test_the_import_reads_as_a_dataset_with_the_documented_schema(imported):
    files = sorted(imported.rglob("*.parquet"))
    assert files
    for f in files:
        assert pq.read_schema(f).remove_metadata().equals(EXPECTED), f
    dataset = ds.dataset(imported, format="parquet")
    assert dataset.schema.remove_metadata().equals(EXPECTED)
    assert sorted(p.name for p in imported.iterdir() if p.is_file()) == ["_rejects.csv", "_slots.csv"]


def test_rows_are_the_inserted_events_in_true_utc(imported):
    table = ds.dataset(imported, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(ROWS)
    assert sorted(table["ts"].to_pylist()) == sorted(r[0] for r in ROWS)
    kinds = {k["values"]: k["counts"] for k in pc.value_counts(table["kind"]).to_pylist()}
    clicks = sum(1 for r in ROWS if r[3])
    assert kinds == {"impression": len(ROWS) - clicks, "click": clicks}
    for col in ["tenant", "slot", "city", "banner"]:
        assert pc.all(pc.match_substring_regex(table[col], NAME)).as_py(), col
    assert set(table["city"].to_pylist()) == {"pune", "mumbai", "delhi"}
    assert set(table["customer_id"].to_pylist()) == {None, "c-7"}
    assert pc.count_distinct(table["event_id"]).as_py() == table.num_rows
    ist = dt.timezone(SHIFT)
    for f in sorted(imported.rglob("*.parquet")):
        day = f.parent.name.removeprefix("dt=")
        assert {t.astimezone(ist).date().isoformat() for t in pq.read_table(f)["ts"].to_pylist()} == {day}
    assert isinstance(table.schema.field("ts").type, pa.TimestampType)
