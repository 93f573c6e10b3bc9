"""Three Cassandra nodes and three Kafka brokers on this machine (scripts/services --nodes 3), each
losing a node: writes at LOCAL_QUORUM to a keyspace of replication 3 go on with one node down and
are read back from another quorum; a topic of replication 3 takes appends and is read after its
partition leader stops.

The clusters run on a loopback network of their own (127.X.Y.2-4) with data in a temporary
folder, apart from the single-node services. Runs under SLOTBANDIT_REQUIRE_SERVICES=1
(scripts/test.sh) or SLOTBANDIT_CLUSTER_TESTS=1; about two minutes on 2 cores."""
import os
import random
import re
import subprocess
from pathlib import Path

import pytest

BIN = os.environ.get("SLOTBANDIT_BIN", "target/debug/slotbandit")
SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services"

if "1" not in (os.environ.get("SLOTBANDIT_REQUIRE_SERVICES"), os.environ.get("SLOTBANDIT_CLUSTER_TESTS")):
    pytest.skip("cluster tests run under SLOTBANDIT_REQUIRE_SERVICES=1 or SLOTBANDIT_CLUSTER_TESTS=1",
                allow_module_level=True)


def run(*args, env=None, check=True):
    done = subprocess.run([*args], capture_output=True, text=True, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def slotbandit(*args):
    return run(BIN, *args).stdout


class Cluster:
    """One service's cluster of 3, driven by its script."""

    def __init__(self, service, data, net):
        self.script = str(SERVICES / f"{service}.sh")
        self.env = {**os.environ, f"SLOTBANDIT_{service.upper()}_DATA": str(data),
                    f"SLOTBANDIT_{service.upper()}_NET": net}
        self.var = f"SLOTBANDIT_{service.upper()}"

    def __call__(self, *args, check=True):
        return run(self.script, *args, env=self.env, check=check)

    def start(self):
        lines = self("start", "--nodes", "3").stdout.splitlines()
        [contacts] = [line.split("=", 1)[1] for line in lines if line.startswith(self.var + "=")]
        return contacts

    def states(self):
        """Exit code of `status` and each node's state word."""
        done = self("status", "--nodes", "3", check=False)
        states = dict(re.findall(r"^node (\d) \S+ (\w+)", done.stdout, re.M))
        return done.returncode, states


@pytest.fixture(scope="module")
def net():
    return f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"


@pytest.fixture(scope="module")
def cassandra(tmp_path_factory, net):
    cluster = Cluster("cassandra", tmp_path_factory.mktemp("cassandra-cluster"), net)
    try:
        yield cluster, cluster.start()
    finally:
        cluster("reset", "--nodes", "3", check=False)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory, net):
    cluster = Cluster("kafka", tmp_path_factory.mktemp("kafka-cluster"), net)
    try:
        yield cluster, cluster.start()
    finally:
        cluster("reset", "--nodes", "3", check=False)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    data = tmp_path_factory.mktemp("gen") / "data"
    slotbandit("gen", "--out", str(data), "--events", "3000", "--days", "1", "--tenants", "1",
               "--cities", "3", "--banners", "3", "--seed", "21")
    return data


def test_cassandra_cluster_writes_at_quorum_with_a_node_down(cassandra, net, history, tmp_path):
    cluster, contacts = cassandra
    assert contacts == ",".join(f"{net}.{i}:9042" for i in (2, 3, 4))
    assert cluster.states() == (0, {"1": "up", "2": "up", "3": "up"})
    store = f"cassandra://{contacts}/sb_cluster"
    slotbandit("schema", "apply", "--store", store, "--replication", "simple:3")

    cluster("stop-node", "2")
    assert cluster.states() == (1, {"1": "up", "2": "down", "3": "up"})
    log = f"file:{tmp_path / 'log'}?partitions=2"
    slotbandit("produce", "--log", log, "--from", str(history))
    slotbandit("stream", "--log", log, "--store", store, "--stop-at-end")
    written = slotbandit("posteriors", "--store", store, "--format", "csv")
    assert len(written.splitlines()) > 1

    # Written to nodes 1 and 3; read from 2 and 3 once 2 is back and 1 is gone.
    cluster("start-node", "2")
    assert cluster.states() == (0, {"1": "up", "2": "up", "3": "up"})
    cluster("stop-node", "1")
    assert slotbandit("posteriors", "--store", store, "--format", "csv") == written
    cluster("start-node", "1")
    assert cluster.states()[0] == 0


def test_kafka_cluster_takes_appends_and_reads_after_the_leader_stops(kafka, net, history):
    cluster, contacts = kafka
    assert contacts == ",".join(f"{net}.{i}:9092" for i in (2, 3, 4))
    assert cluster.states() == (0, {"1": "up", "2": "up", "3": "up"})
    log = f"kafka://{contacts}/clicks?partitions=1"
    first = slotbandit("produce", "--log", log, "--from", str(history))
    produced = int(re.search(r"produced (\d+) messages", first).group(1))

    describe = cluster("run-class", "org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                       contacts, "--describe", "--topic", "clicks").stdout
    assert "ReplicationFactor: 3" in describe, describe
    leader = re.search(r"Partition: 0\s+Leader: (\d)", describe).group(1)

    cluster("stop-node", leader)
    assert cluster.states()[1][leader] == "down"
    slotbandit("produce", "--log", log, "--from", str(history))
    consumed = slotbandit("consume", "--log", log)
    assert f"consumed {2 * produced} messages ({2 * produced} valid events" in consumed, consumed

    cluster("start-node", leader)
    assert cluster.states() == (0, {"1": "up", "2": "up", "3": "up"})
