"""`slotbandit evaluate` against the Open Bandit Pipeline (obp, a client we did not write): the real
service decides with a 30% holdout and logs its propensities, `consume --parquet` archives the
log, and obp's IPW, SNIPW and DR, given the same logged data — rewards and propensities read from
the archive with pyarrow, the target's probabilities and the reward model from
`evaluate --decisions-out` — give the estimates `evaluate` printed."""
import json
import random
import subprocess
import zlib
from collections import defaultdict

import numpy as np
import pyarrow.dataset as ds
import pytest
from obp.ope import (DoublyRobust, InverseProbabilityWeighting,
                     SelfNormalizedInverseProbabilityWeighting)

from serve_fixture import BIN, SAMPLE, import_holdout, run, start_service, stop_service

CITIES = ("pune", "mumbai", "delhi")
POLICIES = ("uniform", "thompson:prior=30,refresh=1")


def logged_archive(tmp_path, decisions=900, seed=17):
    s = start_service(tmp_path, backfill=True)
    rng = random.Random(seed)
    try:
        import_holdout(s, 0.3)
        for i in range(decisions):
            status, body = s.request("GET", f"/v1/tenants/ajio/slots/hero/decision?city={CITIES[i % 3]}",
                                     key=s.serve_key)
            assert status == 200
            d = json.loads(body)
            banner = d["banners"][0]["banner"]
            # A CTR per banner that the site's audience has and nobody tells the estimators.
            if rng.random() < 0.05 + (zlib.crc32(banner.encode()) % 7) / 20:
                click = json.dumps({"request_id": d["request_id"], "banner": banner}).encode()
                status, _ = s.request("POST", "/v1/tenants/ajio/clicks", click, key=s.serve_key)
                assert status == 202
    finally:
        stop_service(s)
    out = tmp_path / "archive"
    run("consume", "--log", f"file:{tmp_path / 'log'}", "--parquet", str(out))
    return out, f"embedded:{tmp_path / 'store.redb'}"


def test_the_estimates_agree_with_the_open_bandit_pipeline(tmp_path):
    archive, store = logged_archive(tmp_path)
    rows_out = tmp_path / "decisions.jsonl"
    args = ["evaluate", "--input", str(archive), "--store", store, "--format", "json",
            "--decisions-out", str(rows_out)]
    for p in POLICIES:
        args += ["--policy", p]
    evaluation = json.loads(run(*args))

    table = ds.dataset(archive, format="parquet", partitioning="hive").to_table().to_pylist()
    shown = {(e["request_id"], e["banner"]): e for e in table if e["kind"] == "impression"}
    clicked = {(e["request_id"], e["banner"]) for e in table if e["kind"] == "click"}
    records = defaultdict(list)
    for line in rows_out.read_text().splitlines():
        r = json.loads(line)
        records[r["policy"]].append(r)
    skipped = evaluation["skipped"]
    assert evaluation["impressions"] == len(shown)

    banners = sorted({b for rs in records.values() for r in rs for b in r["banners"]})
    column = {b: i for i, b in enumerate(banners)}
    for result in evaluation["policies"]:
        rs = records[result["policy"]]
        assert len(rs) + skipped["without_propensity"] + skipped["carousel"] + \
            skipped["banner_not_valid"] + skipped["unknown_slot"] == len(shown)
        assert len(rs) > 0.9 * len(shown)
        n = len(rs)
        action = np.array([column[r["banners"][r["shown"]]] for r in rs])
        reward = np.zeros(n)
        pscore = np.zeros(n)
        action_dist = np.zeros((n, len(banners), 1))
        model = np.zeros((n, len(banners), 1))
        for i, r in enumerate(rs):
            key = (r["request_id"], r["banners"][r["shown"]])
            # What evaluate weighed is what the archive holds.
            assert r["propensity"] == shown[key]["propensity"]
            reward[i] = float(key in clicked)
            assert r["reward"] == reward[i]
            pscore[i] = shown[key]["propensity"]
            for b, p, q in zip(r["banners"], r["target"], r["model"]):
                action_dist[i, column[b], 0] = p
                model[i, column[b], 0] = q
            if result["policy"] == "uniform":
                assert r["target"] == pytest.approx([1 / len(r["banners"])] * len(r["banners"]))
        assert pscore.min() > 0 and reward.sum() > 20

        obp = {
            "ipw": InverseProbabilityWeighting().estimate_policy_value(
                reward=reward, action=action, pscore=pscore, action_dist=action_dist),
            "snipw": SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(
                reward=reward, action=action, pscore=pscore, action_dist=action_dist),
            "dr": DoublyRobust().estimate_policy_value(
                reward=reward, action=action, pscore=pscore, action_dist=action_dist,
                estimated_rewards_by_reg_model=model),
        }
        overall = result["rows"][-1]
        assert overall["slot"] == "*"
        estimate = overall["estimate"]
        assert estimate["decisions"] == n
        for name, value in obp.items():
            assert estimate[name]["estimate"] == pytest.approx(value, rel=1e-9, abs=1e-12), \
                (result["policy"], name)
            assert estimate[name]["low"] < value < estimate[name]["high"]
        # The logged policy's CTR, and the weights' effective sample size, by definition.
        assert estimate["logged"]["estimate"] == pytest.approx(reward.mean(), rel=1e-12)
        w = action_dist[np.arange(n), action, 0] / pscore
        assert estimate["effective_sample_size"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum(), rel=1e-9)


def test_evaluation_refuses_what_it_cannot_weigh(tmp_path):
    store = f"embedded:{tmp_path / 'store.redb'}"
    run("backfill", "--input", str(SAMPLE), "--store", store, "-w", "1")
    # The sample history is older than the decision log: no propensities.
    done = subprocess.run([BIN, "evaluate", "--input", str(SAMPLE), "--store", store],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "propensity" in done.stderr and "--input" in done.stderr, done.stderr
    for flag, value, rule in [("--policy", "greedy", "must be uniform or thompson"),
                              ("--policy", "thompson:window=-5", "window must be a positive number"),
                              ("--policy", "thompson:decay=2", "unknown setting"),
                              ("--confidence", "1.5", "between 0 and 1")]:
        done = subprocess.run([BIN, "evaluate", "--input", str(SAMPLE), "--store", store, flag, value],
                              capture_output=True, text=True)
        assert done.returncode != 0 and flag in done.stderr and rule in done.stderr, done.stderr
