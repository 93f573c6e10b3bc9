"""The Dockerfile and the Kubernetes manifests, checked with tools (no Docker engine or cluster
here): every manifest, and every object the kustomize overlays render, validates strictly against
the Kubernetes schemas (kubernetes-validate), the Dockerfile passes hadolint, and the manifests
agree with each other and with the CLI. The Prometheus Operator's PodMonitor is a custom resource
that kubernetes-validate has no schema for (nor is one at hand offline), so its structure is
checked here explicitly instead."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s" / "base"
OVERLAYS = ROOT / "k8s" / "overlays"
TOOLS = Path(sys.executable).parent
SLOTBANDIT = os.environ.get("SLOTBANDIT_BIN", "target/debug/slotbandit")


# Kinds kubernetes-validate has no schema for, checked structurally below.
CUSTOM_KINDS = {"PodMonitor"}


def manifest_files():
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def manifests():
    docs = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind, name, docs=None):
    docs = manifests() if docs is None else docs
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def validate_strictly(files):
    out = subprocess.run(
        [TOOLS / "kubernetes-validate", "--strict", "--quiet", *map(str, files)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_manifest_validates_strictly():
    files = manifest_files()
    assert files, "k8s/base has manifests"
    validate_strictly(files)


def render(kustomization):
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render the overlays"
    out = subprocess.run([kubectl, "kustomize", str(kustomization)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_base_applies_every_manifest_but_the_one_off_backfill():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in manifest_files()} - {"backfill-job.yaml"}
    assert set(listed) == files | {"monitoring"}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_overlay_renders_objects_that_validate_strictly(overlay, tmp_path):
    docs = render(OVERLAYS / overlay)
    standard = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    assert {d["kind"] for d in docs} - {d["kind"] for d in standard} == CUSTOM_KINDS
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(standard))
    validate_strictly([rendered])
    assert_timely_clusters_agree(docs)
    assert_pod_monitors_scrape_the_pods(docs)


def replicas(docs):
    return {
        d["metadata"]["name"]: d["spec"]["replicas"] for d in docs if d["kind"] == "StatefulSet"
    }


def test_dev_runs_one_of_each_with_small_requests():
    docs = render(OVERLAYS / "dev")
    assert replicas(docs) == {"stream": 1, "serve-a": 1, "serve-b": 1}
    for d in docs:
        if d["kind"] == "StatefulSet":
            requests = d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
            assert requests == {"cpu": "250m", "memory": "128Mi"}, d["metadata"]["name"]


def test_prod_runs_the_timely_cluster_and_two_replicas_of_each_serve_half():
    docs = render(OVERLAYS / "prod")
    assert replicas(docs) == {"stream": 3, "serve-a": 2, "serve-b": 2}
    stream = find("StatefulSet", "stream", docs)
    words, n, _, _ = cluster_args(stream["spec"]["template"]["spec"]["containers"][0])
    assert n == 3 and words[words.index("-w") + 1] == "2"


def test_every_deployment_keeps_the_priors():
    """The stream job keeps every slot's priors beside the counts (docs/architecture.md,
    "Priors"): no deployment may run it without, and none needs a separate priors step."""
    for docs in (manifests(), render(OVERLAYS / "dev"), render(OVERLAYS / "prod")):
        stream = find("StatefulSet", "stream", docs)
        words = cli_words(stream["spec"]["template"]["spec"]["containers"][0])
        assert "--no-priors" not in words, words
        assert words[words.index("--priors-every-minutes") + 1] == "1", words
    backfill = find("Job", "backfill")
    assert "--no-priors" not in cli_words(backfill["spec"]["template"]["spec"]["containers"][0])
    jobs = [d for d in manifests() if d["kind"] in ("StatefulSet", "Job")]
    for d in jobs:
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert cli_words(c)[0] != "priors", d["metadata"]["name"]


def test_the_rules_config_map_is_the_alert_rules_file():
    rules = find("ConfigMap", "slotbandit-prometheus-rules", render(K8S))
    assert rules["data"] == {"alerts.yml": (ROOT / "deploy/prometheus/alerts.yml").read_text()}


def test_the_pods_carry_prometheus_scrape_annotations_for_their_metrics_port():
    for d in manifests():
        if d["kind"] != "StatefulSet":
            continue
        template = d["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        ports = {p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert annotations["prometheus.io/scrape"] == "true", d["metadata"]["name"]
        assert annotations["prometheus.io/path"] == "/metrics", d["metadata"]["name"]
        assert int(annotations["prometheus.io/port"]) in ports, d["metadata"]["name"]


def selects(selector, labels):
    """Whether a label selector (matchLabels and In expressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def assert_pod_monitors_scrape_the_pods(docs):
    """The PodMonitors' structure (monitoring.coreos.com/v1; required: spec.selector and
    podMetricsEndpoints), that they select the stream and serve pods and name a port those pods
    have, and that the targets get the job names the alerts and the dashboard expect."""
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodMonitor"}
    assert set(monitors) == {"slotbandit-stream", "slotbandit-serve"}
    expected = {"slotbandit-stream": {"stream"}, "slotbandit-serve": {"serve-a", "serve-b"}}
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == "slotbandit"
        assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
        spec = monitor["spec"]
        assert set(spec) == {"selector", "podMetricsEndpoints"}
        assert set(spec["selector"]) <= {"matchLabels", "matchExpressions"}
        workloads = {
            d["metadata"]["name"]: d["spec"]["template"] for d in docs
            if d["kind"] == "StatefulSet"
            and selects(spec["selector"], d["spec"]["template"]["metadata"]["labels"])
        }
        assert set(workloads) == expected[name], (name, set(workloads))
        for endpoint in spec["podMetricsEndpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "relabelings"}, endpoint
            assert endpoint["path"] == "/metrics"
            assert re.fullmatch(r"\d+[sm]", endpoint["interval"])
            assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": name}]
            for template in workloads.values():
                ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
                assert endpoint["port"] in ports, (name, endpoint["port"], ports)


def test_the_pod_monitors_scrape_the_pods():
    assert_pod_monitors_scrape_the_pods(render(K8S))


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


def hosts(key, docs=None):
    text = find("ConfigMap", "slotbandit-cluster", docs)["data"][key]
    return [line for line in text.splitlines() if line.strip()]


def assert_timely_clusters_agree(docs):
    stream = find("StatefulSet", "stream", docs)
    words, n, p, hostfile = cluster_args(stream["spec"]["template"]["spec"]["containers"][0])
    assert "stream" in words
    assert n == stream["spec"]["replicas"] == len(hosts("stream-hosts", docs))
    assert hostfile.endswith("/stream-hosts") and p == "${HOSTNAME##*-}"
    service = stream["spec"]["serviceName"]
    for i, line in enumerate(hosts("stream-hosts", docs)):
        assert re.fullmatch(rf"stream-{i}\.{service}\.slotbandit\.svc\.cluster\.local:2101", line)


def test_timely_clusters_agree_on_their_processes():
    assert_timely_clusters_agree(manifests())

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
