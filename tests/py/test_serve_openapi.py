"""schemathesis, a client we did not write, fuzzes every operation of /openapi.json (valid and
invalid input) and finds no 5xx answer."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serve_fixture import start_service, stop_service


@pytest.fixture()
def service(tmp_path):
    s = start_service(tmp_path, backfill=False)
    yield s
    stop_service(s)


def test_schemathesis_finds_no_server_error(service, tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    examples = os.environ.get("SLOTBANDIT_SCHEMATHESIS_EXAMPLES", "40")
    run = subprocess.run(
        [exe, "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
         "run", f"{service.base}/openapi.json",
         "--checks", "not_a_server_error",
         "--mode", "all",
         "--max-examples", examples,
         "--seed", "7",
         "--header", f"Authorization: Bearer {service.admin_key}",
         "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=900)
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    # The run really exercised the API: decisions were answered.
    status, metrics = service.request("GET", "/metrics")
    decisions = [l for l in metrics.decode().splitlines() if l.startswith("slotbandit_decisions_total")]
    assert decisions and float(decisions[0].split()[-1]) > 0, decisions
