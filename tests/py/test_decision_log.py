"""The decision log as other tools read it: decisions made by the real service are logged with
their propensities, `slotbandit consume --parquet` archives the log in the history layout, and
pyarrow (a reader we did not write) reads policy, holdout, propensity and rank from it."""
import json
import subprocess

import pyarrow.compute as pc
import pyarrow.dataset as ds

from serve_fixture import BIN, import_holdout, run, start_service, stop_service

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


def test_the_report_counts_what_the_site_was_answered(tmp_path):
    """`slotbandit report` over the archived log: per group, exactly the decisions the service
    answered as TS or as holdout and the clicks posted for them (a click posted twice counts
    once and is reported as repeated)."""
    s = start_service(tmp_path, backfill=True)
    try:
        import_holdout(s, 0.5)
        ledger = {False: [0, 0], True: [0, 0]}
        seen_holdout, doubled = False, 0
        for attempt in range(400):
            status, body = s.request("GET", "/v1/tenants/ajio/slots/hero/decision?city=pune",
                                     key=s.serve_key)
            assert status == 200
            d = json.loads(body)
            seen_holdout |= d["holdout"]
            if not seen_holdout:
                continue  # the import reaches the cache within a refresh; count from then on
            ledger[d["holdout"]][0] += 1
            if attempt % 3 == 0:
                click = json.dumps({"request_id": d["request_id"],
                                    "banner": d["banners"][0]["banner"]}).encode()
                times = 2 if doubled == 0 else 1
                doubled += times - 1
                for _ in range(times):
                    status, _ = s.request("POST", "/v1/tenants/ajio/clicks", click, key=s.serve_key)
                    assert status == 202
                ledger[d["holdout"]][1] += 1
    finally:
        stop_service(s)
    assert ledger[True][0] > 50 and ledger[False][0] > 50, ledger

    out = tmp_path / "archive"
    run("consume", "--log", f"file:{tmp_path / 'log'}", "--parquet", str(out))
    report = json.loads(run("report", "--input", str(out), "--format", "json"))
    hero = next(r for r in report["rows"] if r["slot"] == "hero")

    # A click carries its decision's group, signed into the token: the same as its impression's.
    events = ds.dataset(out, format="parquet", partitioning="hive").to_table().to_pylist()
    group_of = {e["request_id"]: (e["policy"], e["holdout"]) for e in events
                if e["kind"] == "impression"}
    clicks = [e for e in events if e["kind"] == "click"]
    assert {e["holdout"] for e in clicks} == {True, False}
    assert all((e["policy"], e["holdout"]) == group_of[e["request_id"]] for e in clicks)
    # Decisions before the holdout reached the cache count as TS: the ledger starts after them.
    assert hero["holdout"] == {"impressions": ledger[True][0], "clicks": ledger[True][1]}
    assert hero["ts"]["impressions"] >= ledger[False][0]
    assert hero["ts"]["clicks"] == ledger[False][1]
    assert report["repeated_clicks"] == doubled == 1
    assert report["unmatched_clicks"] == 0
    assert report["rows"][-1]["slot"] == "*"
    u = hero["uplift"]
    assert u["difference"]["low"] <= u["difference"]["estimate"] <= u["difference"]["high"]

    bad = subprocess.run([BIN, "report", "--input", str(out), "--from", "2026-12-02T00:00:00Z",
                          "--to", "2026-12-01T00:00:00Z"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--from" in bad.stderr, bad.stderr
