"""The decision log as other tools read it: decisions made by the real service are logged with
their propensities, `slotbandit consume --parquet` archives the log in the history layout, and
pyarrow (a reader we did not write) reads policy, holdout, propensity and rank from it."""
import json
import subprocess

import pyarrow.compute as pc
import pyarrow.dataset as ds

from serve_fixture import BIN, run, start_service, stop_service

DECISIONS = 60


def test_the_service_log_archived_as_parquet_carries_the_decision_log(tmp_path):
    s = start_service(tmp_path, backfill=True)
    try:
        request_ids = set()
        for i in range(DECISIONS):
            city = ["pune", "mumbai", "delhi"][i % 3]
            status, body = s.request("GET", f"/v1/tenants/ajio/slots/hero/decision?city={city}",
                                     key=s.serve_key)
            assert status == 200
            # The token's tag is the decision's ID in its events (README, "request_id").
            request_ids.add(json.loads(body)["request_id"].split(".")[-1])
    finally:
        stop_service(s)  # the service flushes its impressions to the log on SIGTERM

    out = tmp_path / "archive"
    printed = run("consume", "--log", f"file:{tmp_path / 'log'}", "--parquet", str(out))
    assert f"wrote {DECISIONS} events" in printed, printed

    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == DECISIONS
    assert set(table["request_id"].to_pylist()) == request_ids
    assert set(table["kind"].to_pylist()) == {"impression"}
    assert set(table["policy"].to_pylist()) == {"thompson"}
    assert pc.min(table["policy_version"]).as_py() >= 1
    assert set(table["holdout"].to_pylist()) == {False}
    assert set(table["rank"].to_pylist()) == {1}
    propensity = table["propensity"].to_pylist()
    assert all(0.0 < p <= 1.0 for p in propensity), propensity
    assert all(0.0 <= e < 0.01 for e in table["propensity_error"].to_pylist())
    # The sample's posteriors are far from uniform: the logged probabilities say so.
    assert max(propensity) > 0.5

    # A second archive into the same folder would count every event twice: refused.
    again = subprocess.run([BIN, "consume", "--log", f"file:{tmp_path / 'log'}", "--parquet", str(out)],
                           capture_output=True, text=True)
    assert again.returncode != 0
    assert "--parquet" in again.stderr and "already holds Parquet" in again.stderr
