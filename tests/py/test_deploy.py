"""The Dockerfile and the Kubernetes manifests, checked with tools (no Docker engine or cluster
here): every manifest validates strictly against the Kubernetes schemas (kubernetes-validate),
the Dockerfile passes hadolint, and the manifests agree with each other and with the CLI."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TOOLS = Path(sys.executable).parent
SLOTBANDIT = os.environ.get("SLOTBANDIT_BIN", "target/debug/slotbandit")


def manifests():
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind, name):
    return next(d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_every_manifest_validates_strictly():
    files = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert files, "k8s/ has manifests"
    out = subprocess.run(
        [TOOLS / "kubernetes-validate", "--strict", "--quiet", *files],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dockerfile_passes_hadolint():
    # DL3008 (pin apt package versions) is left out on purpose: Debian's security updates
    # replace pinned versions, and the image takes them on each build.
    out = subprocess.run(
        [TOOLS / "hadolint", "--ignore", "DL3008", "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def cli_words(container):
    """The subcommand and flags a container runs, whether directly or through `sh -c`."""
    if container.get("command", [])[:2] == ["/bin/sh", "-c"]:
        words = shlex.split(container["args"][0])
        assert words[:2] == ["exec", "slotbandit"], words
        return words[2:]
    assert "command" not in container, "the image's entrypoint is slotbandit"
    return container["args"]


def cluster_args(container):
    words = cli_words(container)
    flag = lambda f: words[words.index(f) + 1]  # noqa: E731
    return words, int(flag("-n")), flag("-p"), flag("-h")


def hosts(key):
    text = find("ConfigMap", "slotbandit-cluster")["data"][key]
    return [line for line in text.splitlines() if line.strip()]


def test_timely_clusters_agree_on_their_processes():
    stream = find("StatefulSet", "stream")
    words, n, p, hostfile = cluster_args(stream["spec"]["template"]["spec"]["containers"][0])
    assert "stream" in words
    assert n == stream["spec"]["replicas"] == len(hosts("stream-hosts"))
    assert hostfile.endswith("/stream-hosts") and p == "${HOSTNAME##*-}"
    service = stream["spec"]["serviceName"]
    for i, line in enumerate(hosts("stream-hosts")):
        assert re.fullmatch(rf"stream-{i}\.{service}\.slotbandit\.svc\.cluster\.local:2101", line)

    backfill = find("Job", "backfill")
    words, n, p, hostfile = cluster_args(backfill["spec"]["template"]["spec"]["containers"][0])
    assert "backfill" in words
    assert n == backfill["spec"]["completions"] == backfill["spec"]["parallelism"]
    assert n == len(hosts("backfill-hosts"))
    assert hostfile.endswith("/backfill-hosts") and p == "$JOB_COMPLETION_INDEX"
    assert backfill["spec"]["completionMode"] == "Indexed"
    subdomain = backfill["spec"]["template"]["spec"]["subdomain"]
    for i, line in enumerate(hosts("backfill-hosts")):
        assert re.fullmatch(rf"backfill-{i}\.{subdomain}\.slotbandit\.svc\.cluster\.local:2101", line)


def test_the_commands_in_the_manifests_are_ones_the_cli_accepts():
    env = find("ConfigMap", "slotbandit")["data"]
    assert env["SLOTBANDIT_LOG"].startswith("kafka://")
    assert env["SLOTBANDIT_STORE"].startswith("cassandra://")
    containers = [
        (d["metadata"]["name"], c)
        for d in manifests() if d["kind"] in ("StatefulSet", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert {name for name, _ in containers} == {
        "stream", "backfill", "serve-a", "serve-b", "schema-apply"
    }
    for name, c in containers:
        words = cli_words(c)
        # Every flag of the manifest is known to the binary: `--help` of the subcommand
        # lists it.
        help_text = subprocess.run(
            [SLOTBANDIT, words[0], "--help"], capture_output=True, text=True, check=True
        ).stdout
        for word in words[1:]:
            if word.startswith("-"):
                assert re.search(rf"(^|[ ,]){re.escape(word)}[ ,<\n]", help_text, re.M), (
                    f"{name}: {word} is not a flag of `slotbandit {words[0]}`"
                )


def test_the_serve_replicas_split_the_tenants_and_the_ingress_routes_each_to_its_half():
    halves = {}
    for d in manifests():
        if d["kind"] == "StatefulSet" and d["metadata"]["name"].startswith("serve-"):
            words = cli_words(d["spec"]["template"]["spec"]["containers"][0])
            halves[d["metadata"]["name"]] = set(words[words.index("--tenants") + 1].split(","))
    assert len(halves) == 2
    a, b = halves.values()
    assert a and b and not a & b, halves
    routes = {}
    for rule in find("Ingress", "serve")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            routes[path["path"]] = path["backend"]["service"]["name"]
    for statefulset, tenants in halves.items():
        service = next(
            d["metadata"]["name"] for d in manifests()
            if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None"
            and d["spec"]["selector"] == find("StatefulSet", statefulset)["spec"]["selector"]["matchLabels"]
        )
        for tenant in tenants:
            for prefix in (f"/v1/tenants/{tenant}/", f"/adclick/{tenant}/"):
                assert routes.get(prefix) == service, (prefix, routes)
