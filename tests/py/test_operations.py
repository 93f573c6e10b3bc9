"""Operations against the real thing: Prometheus (Debian's package) scrapes a running stream job
and lookup service on a Cassandra node and a Kafka broker of their own; every dashboard query
returns data, and each fault makes its alerts fire and then resolve after recovery.

The alert rules are deploy/prometheus/alerts.yml with time scaled down (every `for:` and range
selector, and the thresholds that are durations), so that a fault shows within seconds; the
expressions, labels and every other threshold are the shipped ones."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from serve_fixture import BIN, ROOT, free_port, free_ports, hero_with_holdout, run, wait_for

SERVICES = ROOT / "scripts" / "services"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD_QUERIES = ROOT / "deploy" / "grafana" / "queries.py"
PROMETHEUS = "/usr/bin/prometheus"

# Thresholds that are durations in seconds, scaled like `for:` and ranges.
SCALED_THRESHOLDS = {
    "SlotbanditOldestUncountedEvent": 4,
    "SlotbanditEpochsNotStored": 6,
    "SlotbanditServeCacheStale": 4,
}
FOR = "2s"
RANGE = "10s"
ALERT_TIMEOUT = 120

pytestmark = pytest.mark.skipif(
    not (os.path.exists(PROMETHEUS) and os.environ.get("SLOTBANDIT_CASSANDRA")),
    reason="needs Debian's prometheus and the test services (./scripts/test.sh)",
)


def scaled_rules(out: Path):
    """alerts.yml with `for:`, ranges and duration thresholds scaled down; returns the alerts."""
    doc = yaml.safe_load(RULES.read_text())
    alerts = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            expr = re.sub(r"\[\d+[smh]\]", f"[{RANGE}]", rule["expr"])
            if name in SCALED_THRESHOLDS:
                expr, n = re.subn(r">\s*[0-9.]+\s*$", f"> {SCALED_THRESHOLDS[name]}", expr.strip())
                assert n == 1, f"{name}: no trailing `> N` threshold to scale in {rule['expr']!r}"
            rule["expr"] = expr
            if "for" in rule:
                rule["for"] = FOR
            alerts[name] = rule
    out.write_text(yaml.safe_dump(doc))
    check = subprocess.run(["promtool", "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return alerts


def dashboard_queries():
    spec = importlib.util.spec_from_file_location("slotbandit_dashboard", DASHBOARD_QUERIES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dashboard_queries()


class Services:
    """A Cassandra node and a Kafka broker on ports of their own, so faults touch nothing else."""

    def __init__(self, tmp: Path):
        self.cassandra_port, storage_port, self.kafka_port, controller_port = free_ports(4)
        self.env = {
            **os.environ,
            "SLOTBANDIT_CASSANDRA_PORT": str(self.cassandra_port),
            "SLOTBANDIT_CASSANDRA_STORAGE_PORT": str(storage_port),
            "SLOTBANDIT_CASSANDRA_DATA": str(tmp / "cassandra"),
            "SLOTBANDIT_KAFKA_PORT": str(self.kafka_port),
            "SLOTBANDIT_KAFKA_CONTROLLER_PORT": str(controller_port),
            "SLOTBANDIT_KAFKA_DATA": str(tmp / "kafka"),
        }
        self.cassandra_pid_file = tmp / "cassandra" / "cassandra.pid"

    def run(self, service, command):
        out = subprocess.run([str(SERVICES / f"{service}.sh"), command], env=self.env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{service}.sh {command}: {out.stderr[-2000:]}"

    def start_both(self):
        procs = [subprocess.Popen([str(SERVICES / f"{s}.sh"), "start"], env=self.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for s in ("cassandra", "kafka")]
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-2000:]

    def signal_cassandra(self, sig):
        os.kill(int(self.cassandra_pid_file.read_text()), sig)


class Process:
    """A slotbandit process that can be killed and started again with the same arguments."""

    def __init__(self, args, tmp: Path, name: str):
        self.args, self.log, self.proc = args, tmp / f"{name}.log", None

    def start(self, extra=()):
        self.proc = subprocess.Popen([BIN, *self.args, *extra], stdout=subprocess.PIPE,
                                     stderr=open(self.log, "a"), text=True,
                                     env={**os.environ, "RUST_LOG": "warn"})
        return self.proc

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=30)

    def ensure_running(self):
        """Starts it again if it stopped (as Kubernetes restarts a failed pod)."""
        if self.proc.poll() is not None:
            self.start()


class Traffic(threading.Thread):
    """Decisions and clicks against the service, as a site sends them, until stopped; holding
    `lock` pauses it. `answered` counts, per decision group, the impressions and clicks the
    service acknowledged."""

    def __init__(self, base, key):
        super().__init__(daemon=True)
        self.base, self.key, self.stop = base, key, threading.Event()
        self.lock = threading.Lock()
        self.answered = {"thompson": [0, 0], "holdout": [0, 0]}

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Authorization", "Bearer " + self.key)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, json.loads(res.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return None, None

    def run(self):
        i = 0
        while not self.stop.is_set():
            with self.lock:
                self.decide_and_click(i)
            i += 1
            time.sleep(0.02)

    def decide_and_click(self, i):
        city = ("pune", "mumbai", "delhi")[i % 3]
        status, answer = self.call("GET", f"/v1/tenants/ajio/slots/hero/decision?city={city}")
        if status != 200:
            return
        group = self.answered["holdout" if answer["holdout"] else "thompson"]
        group[0] += len(answer["banners"])
        if i % 3 == 0:
            status, _ = self.call("POST", "/v1/tenants/ajio/clicks",
                                  {"request_id": answer["request_id"],
                                   "banner": answer["banners"][0]["banner"]})
            group[1] += status == 202


class Prometheus:
    def __init__(self, tmp: Path, targets: dict, rules: Path):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: self.get("/-/ready") is not None, 60, "Prometheus ready")

    def get(self, path):
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as res:
                return json.loads(res.read()) if path.startswith("/api") else res.read()
        except OSError:
            return None

    def query(self, expr, at=None):
        params = {"query": expr} | ({} if at is None else {"time": at})
        answer = self.get("/api/v1/query?" + urllib.parse.urlencode(params))
        assert answer and answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def firing(self):
        answer = self.get("/api/v1/alerts") or {"data": {"alerts": []}}
        return {(a["labels"]["alertname"], a["labels"].get("job", "")) for a in
                answer["data"]["alerts"] if a["state"] == "firing"}

    def firing_names(self):
        return {name for name, _ in self.firing()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    services = Services(tmp)
    services.start_both()
    store = f"cassandra://127.0.0.1:{services.cassandra_port}/ops?deadline_s=900"
    log = f"kafka://127.0.0.1:{services.kafka_port}/events?partitions=2"
    run("schema", "apply", "--store", store)
    admin = run("keys", "add", "--store", store, "--tenant", "ajio", "--role", "admin").strip()
    serve_key = run("keys", "add", "--store", store, "--tenant", "ajio", "--role", "serve").strip()
    job_port = free_port()
    job = Process(["stream", "--log", log, "--store", store, "--epoch-ms", "200",
                   "--metrics-listen", f"127.0.0.1:{job_port}"], tmp, "stream")
    job.start()
    service = Process(["serve", "--store", store, "--log", log, "--listen", "127.0.0.1:0",
                       "--spool-dir", str(tmp / "spool")], tmp, "serve")
    line = service.start().stdout.readline().strip()
    assert line.startswith("listening on "), line
    base = line.removeprefix("listening on ")
    req = urllib.request.Request(base + "/v1/tenants/ajio/slot-imports", method="POST",
                                 data=hero_with_holdout(0.3).encode())
    req.add_header("Authorization", "Bearer " + admin)
    req.add_header("Content-Type", "text/csv")
    assert urllib.request.urlopen(req, timeout=30).status == 200
    alerts = scaled_rules(tmp / "alerts-scaled.yml")
    prometheus = Prometheus(tmp, {"slotbandit-stream": f"127.0.0.1:{job_port}",
                                  "slotbandit-serve": base.removeprefix("http://")},
                            tmp / "alerts-scaled.yml")
    traffic = Traffic(base, serve_key)
    traffic.start()
    yield dict(tmp=tmp, services=services, log=log, job=job, service=service, base=base,
               serve_key=serve_key, admin=admin, alerts=alerts, prometheus=prometheus, traffic=traffic)
    traffic.stop.set()
    traffic.join(timeout=60)
    for p in (prometheus.proc, job.proc, service.proc):
        p.kill()
        p.wait(timeout=30)
    for s in ("kafka", "cassandra"):
        services.run(s, "reset")


def test_every_dashboard_query_returns_data_from_the_real_processes(stack):
    prometheus = stack["prometheus"]
    queries = dashboard_queries()
    assert queries, "the dashboard has no queries"
    empty = []

    def all_answer():
        empty[:] = [(title, expr) for title, expr in queries if not prometheus.query(expr)]
        return not empty

    try:
        wait_for(all_answer, 90, "every dashboard query to return data")
    except AssertionError as e:
        raise AssertionError(f"{e}; still empty: {empty}") from None
    assert prometheus.firing() == set(), "alerts fire on a healthy system"


def test_the_group_counters_count_what_the_service_answered(stack):
    """Paused traffic: once the job has caught up, its per-group counters (scraped by
    Prometheus) equal the impressions and clicks the service acknowledged in each group."""
    prometheus, traffic = stack["prometheus"], stack["traffic"]
    seen = {}

    def counted():
        for counter in ("impressions", "clicks"):
            for r in prometheus.query(
                    f"sum by (group) (slotbandit_stream_group_{counter}_total)"):
                seen[(r["metric"]["group"], counter)] = int(float(r["value"][1]))
        return all(seen.get((group, counter)) == traffic.answered[group][i]
                   for group in traffic.answered for i, counter in enumerate(("impressions", "clicks")))

    with traffic.lock:
        assert traffic.answered["holdout"][0] > 0 and traffic.answered["thompson"][1] > 0
        try:
            wait_for(counted, 60, "the group counters to reach what the service answered")
        except AssertionError as e:
            raise AssertionError(f"{e}: counted {seen}, answered {traffic.answered}") from None


def test_the_uplift_panel_is_the_wald_interval_of_the_group_counts(stack):
    """The dashboard's uplift and extra-clicks PromQL, evaluated by the real Prometheus, equals
    the difference of the two groups' CTRs with a 95% normal interval computed here from the
    groups' counts at the same instant."""
    prometheus = stack["prometheus"]
    queries = dict()
    for title, expr in dashboard_queries():
        queries.setdefault(title, []).append(expr)
    uplift, low, high = queries["Uplift over the holdout"]
    [extra] = queries["Extra clicks earned"]
    wait_for(lambda: prometheus.query(uplift), 60, "an uplift to show")
    at = time.time()

    def per_slot(expr):
        return {(r["metric"]["tenant"], r["metric"]["slot"]): float(r["value"][1])
                for r in prometheus.query(expr, at)}

    counts = {(group, counter): per_slot(
        f"sum by (tenant, slot) (increase(slotbandit_stream_group_{counter}_total"
        f'{{group="{group}"}}[1h]))')
        for group in ("thompson", "holdout") for counter in ("impressions", "clicks")}
    shown = {name: per_slot(expr) for name, expr in
             (("uplift", uplift), ("low", low), ("high", high), ("extra", extra))}
    assert set(shown["uplift"]) == {("ajio", "hero")}
    for slot in shown["uplift"]:
        n_ts, n_h = counts[("thompson", "impressions")][slot], counts[("holdout", "impressions")][slot]
        p_ts = counts[("thompson", "clicks")][slot] / n_ts
        p_h = counts[("holdout", "clicks")][slot] / n_h
        error = (p_ts * (1 - p_ts) / n_ts + p_h * (1 - p_h) / n_h) ** 0.5
        expected = {"uplift": 100 * (p_ts - p_h), "low": 100 * (p_ts - p_h - 1.96 * error),
                    "high": 100 * (p_ts - p_h + 1.96 * error), "extra": (p_ts - p_h) * n_ts}
        for name, value in expected.items():
            assert shown[name][slot] == pytest.approx(value, rel=1e-9, abs=1e-9), name
        assert shown["low"][slot] < shown["uplift"][slot] < shown["high"][slot]


def test_each_fault_fires_its_alerts_and_they_resolve_after_recovery(stack):
    prometheus, services, job = stack["prometheus"], stack["services"], stack["job"]
    fired = set()

    def fault(expected, inject, recover):
        """Injects a fault, waits until every expected alert fires, recovers, waits until no
        alert fires."""
        wait_for(lambda: not prometheus.firing(), ALERT_TIMEOUT, "a quiet start")
        seen = set()

        def all_seen():
            seen.update(prometheus.firing_names())
            return expected <= seen

        watch = threading.Thread(target=wait_for, daemon=True,
                                 args=(all_seen, ALERT_TIMEOUT, "the fault's alerts"))
        watch.start()
        try:
            inject()
            watch.join()
            assert expected <= seen, f"fired {sorted(seen)}, expected {sorted(expected)}"
        finally:
            fired.update(seen)
            recover()
        try:
            wait_for(lambda: not prometheus.firing(), ALERT_TIMEOUT, "every alert to resolve")
        except AssertionError as e:
            values = {name: prometheus.query(stack["alerts"][name]["expr"])
                      for name in prometheus.firing_names()}
            raise AssertionError(f"{e}; still firing: {values}") from None

    # Malformed messages on the log go to the dead letters.
    junk = stack["tmp"] / "junk.jsonl"
    junk.write_text("".join(f"not an event {i}\n" for i in range(200)))
    fault({"SlotbanditDeadLetters"},
          lambda: run("produce", "--log", stack["log"], "--from", str(junk)),
          lambda: None)

    # A producer ahead of a stopped job: the job is down, then far behind when it comes back.
    lag_rule = stack["alerts"]["SlotbanditStreamLag"]["expr"]
    bound = int(float(re.search(r">\s*([0-9.]+)\s*$", lag_rule.strip()).group(1)))
    history = stack["tmp"] / "history"
    run("gen", "--out", str(history), "--events", str(bound + 20_000), "--days", "1",
        "--tenants", "2", "--cities", "4", "--banners", "4", "--seed", "5")

    def stop_job_and_produce():
        job.kill()
        wait_for(lambda: "SlotbanditTargetDown" in prometheus.firing_names(), ALERT_TIMEOUT,
                 "the stopped job to be seen down")
        run("produce", "--log", stack["log"], "--from", str(history))
        # Its first epoch reads for 8 s before anything is stored: long enough to be seen behind.
        job.start(["--epoch-ms", "8000"])

    def restart_job_with_its_usual_epoch():
        job.kill()
        job.start()

    fault({"SlotbanditTargetDown", "SlotbanditStreamLag", "SlotbanditOldestUncountedEvent"},
          stop_job_and_produce, restart_job_with_its_usual_epoch)

    # The store goes away: both processes fail to reach it, the cache ages, no epoch is stored.
    fault({"SlotbanditStoreErrors", "SlotbanditServeCacheStale", "SlotbanditEpochsNotStored"},
          lambda: services.run("cassandra", "stop"),
          lambda: (services.run("cassandra", "start"), job.ensure_running()))

    # A store that hangs: decisions that register a window (an admin key's) wait for its load.
    def hang_store_under_new_windows():
        services.signal_cassandra(signal.SIGSTOP)
        try:
            traffic = Traffic(stack["base"], stack["admin"])
            threads = [threading.Thread(target=traffic.call, args=(
                "GET", f"/v1/tenants/ajio/slots/hero/decision?city=pune&window_minutes={w}"))
                for w in (120, 180) for _ in range(25)]
            for t in threads:
                t.start()
            time.sleep(4)
        finally:
            services.signal_cassandra(signal.SIGCONT)
        for t in threads:
            t.join(timeout=120)

    fault({"SlotbanditDecisionLatencyHigh"}, hang_store_under_new_windows,
          lambda: job.ensure_running())

    # The event log goes away: impressions spool, clicks are refused with 503.
    fault({"SlotbanditSpoolGrowing", "SlotbanditClicksUnavailable", "SlotbanditErrorRatio"},
          lambda: services.run("kafka", "stop"),
          lambda: (services.run("kafka", "start"), job.ensure_running()))

    missing = set(stack["alerts"]) - fired
    assert not missing, f"alerts no fault made fire: {sorted(missing)}"
