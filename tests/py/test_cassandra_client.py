"""The Python cassandra-driver, a client we did not write, reads one slot's posteriors from our
tables (arm_counts all-time rows, priors and prior_cities, which the backfill wrote) and finds
what `slotbandit posteriors` prints: an arm's prior has the mean banner effect × city effect at
the banner's strength, and alpha = alpha0 + clicks, beta = beta0 + impressions - clicks
(docs/architecture.md, "Bandit math" and "Store layouts")."""
import csv
import io
import os
import subprocess
import time

import pytest

BIN = os.environ.get("SLOTBANDIT_BIN", "target/debug/slotbandit")
NODE = os.environ.get("SLOTBANDIT_CASSANDRA", "")

if not NODE:
    if os.environ.get("SLOTBANDIT_REQUIRE_SERVICES") == "1":
        raise RuntimeError("SLOTBANDIT_CASSANDRA is not set but SLOTBANDIT_REQUIRE_SERVICES=1")
    pytest.skip("SLOTBANDIT_CASSANDRA is not set (scripts/services/ starts Cassandra)", allow_module_level=True)

from cassandra.cluster import Cluster  # noqa: E402  (only when a node is there)


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def session():
    host, port = NODE.rsplit(":", 1)
    cluster = Cluster([host], port=int(port))
    yield cluster.connect()
    cluster.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory, session):
    keyspace = f"sbt_py_{os.getpid()}_{time.time_ns() % 10**9}"
    url = f"cassandra://{NODE}/{keyspace}"
    data = tmp_path_factory.mktemp("gen") / "data"
    run("gen", "--out", str(data), "--events", "40000", "--days", "2", "--tenants", "2",
        "--cities", "4", "--banners", "5", "--seed", "17")
    run("schema", "apply", "--store", url)
    run("backfill", "--input", str(data), "--store", url)
    yield keyspace, url
    session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")


def test_python_driver_reads_the_posteriors_slotbandit_prints(session, store):
    keyspace, url = store
    printed = list(csv.DictReader(io.StringIO(run("posteriors", "--store", url, "--format", "csv"))))
    first = printed[0]
    tenant, slot, city = first["tenant"], first["slot"], first["city"]
    want = {r["banner"]: r for r in printed
            if (r["tenant"], r["slot"], r["city"]) == (tenant, slot, city)}
    assert len(want) == 5

    priors = {
        row.banner: (row.alpha0, row.beta0)
        for row in session.execute(
            f"SELECT banner, alpha0, beta0 FROM {keyspace}.priors WHERE tenant = %s AND slot = %s",
            (tenant, slot),
        )
    }
    (level,) = session.execute(
        f"SELECT level FROM {keyspace}.prior_cities WHERE tenant = %s AND slot = %s AND city = %s",
        (tenant, slot, city),
    ).one()
    rows = session.execute(
        f"SELECT banner, impressions, clicks FROM {keyspace}.arm_counts "
        "WHERE tenant = %s AND city = %s AND bucket = -1 AND slot = %s",
        (tenant, city, slot),
    )
    got = {}
    for row in rows:
        a, b = priors.get(row.banner, priors[""])
        strength = a + b
        mean = min(max(a / strength * level, 1e-6), 1 - 1e-6)
        alpha0, beta0 = mean * strength, (1 - mean) * strength
        got[row.banner] = (row.impressions, row.clicks,
                           alpha0 + row.clicks, beta0 + row.impressions - row.clicks)
    assert sorted(got) == sorted(want)
    for banner, (imp, clk, alpha, beta) in got.items():
        w = want[banner]
        assert (imp, clk) == (int(w["impressions"]), int(w["clicks"])), banner
        assert alpha == pytest.approx(float(w["alpha"]), rel=1e-9), banner
        assert beta == pytest.approx(float(w["beta"]), rel=1e-9), banner
        assert alpha != 1 + clk, "the priors were applied, not Beta(1, 1)"


def test_the_schema_version_is_recorded(session, store):
    keyspace, _ = store
    versions = [r.version for r in session.execute(f"SELECT version FROM {keyspace}.schema_version")]
    assert sorted(versions) == [1, 2, 3, 4, 5]
