"""Starts the real `slotbandit serve` on a free port over an embedded store and the file log."""
import csv
import io
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = os.environ.get("SLOTBANDIT_BIN", "target/debug/slotbandit")
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "sample"
ARTIFACTS = ROOT / "test-artifacts"


@dataclass
class Service:
    base: str
    admin_key: str
    serve_key: str
    process: subprocess.Popen

    def request(self, method, path, body=None, key=None, content_type="application/json"):
        req = urllib.request.Request(self.base + path, data=body, method=method)
        req.add_header("Authorization", "Bearer " + (key or self.admin_key))
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, res.read()


def run(*args, timeout=600):
    out = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "RUST_LOG": "warn"})
    assert out.returncode == 0, f"slotbandit {' '.join(args)}: {out.stderr[-3000:]}"
    return out.stdout


def free_ports(n):
    """n distinct free ports: every socket stays bound until all are chosen, so the kernel
    cannot hand one port out twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port():
    return free_ports(1)[0]


def wait_for(check, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sample_slots_valid_for_years(tenant="ajio"):
    """The sample's slot configuration of one tenant, with every banner valid until 2036 (the
    sample's own windows end with its week of history)."""
    rows = list(csv.reader(open(SAMPLE / "_slots.csv")))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(rows[0])
    for r in rows[1:]:
        if r[0] == tenant:
            w.writerow(r[:5] + ["31-Dec-36 23:59:59"])
    return out.getvalue()


def start_service(tmp: Path, backfill=True) -> Service:
    store = f"embedded:{tmp / 'store.redb'}"
    if backfill:
        run("backfill", "--input", str(SAMPLE), "--store", store, "-w", "2")
    admin = run("keys", "add", "--store", store, "--tenant", "ajio", "--role", "admin").strip()
    serve = run("keys", "add", "--store", store, "--tenant", "ajio", "--role", "serve").strip()
    proc = subprocess.Popen(
        [BIN, "serve", "--store", store, "--log", f"file:{tmp / 'log'}", "--listen", "127.0.0.1:0",
         "--spool-dir", str(tmp / "spool"), "--compat-tenant", "ajio"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"})
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    service = Service(line.removeprefix("listening on "), admin, serve, proc)
    status, _ = service.request("POST", "/v1/tenants/ajio/slot-imports",
                                sample_slots_valid_for_years().encode(), content_type="text/csv")
    assert status == 200
    return service


def stop_service(service: Service):
    service.process.terminate()
    service.process.wait(timeout=30)


def hero_with_holdout(share):
    """The sample's hero slot, valid for years, with a holdout share (the slot CSV's `holdout`
    column)."""
    csv = sample_slots_valid_for_years().splitlines()
    return "\n".join([csv[0] + ",recency_minutes,holdout"] +
                      [line + f",,{share}" for line in csv[1:] if ",hero," in line]) + "\n"


def import_holdout(service, share):
    """Re-imports the sample's hero slot with a holdout share."""
    status, _ = service.request("POST", "/v1/tenants/ajio/slot-imports",
                                hero_with_holdout(share).encode(), content_type="text/csv")
    assert status == 200
