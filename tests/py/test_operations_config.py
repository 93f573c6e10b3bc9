"""The monitoring configuration, checked offline: the alert rules pass promtool's checks and unit
tests and each has a runbook section in docs/operations.md; the Grafana dashboard is what
deploy/grafana/dashboard.py builds, survives the SDK's model, and queries only metrics the
processes export; broken rule and dashboard files are refused with their file and line.
(tests/py/test_operations.py runs all of it against live processes.)"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy/prometheus"
GRAFANA = ROOT / "deploy/grafana"
ALERTS = PROMETHEUS / "alerts.yml"
OPERATIONS = ROOT / "docs/operations.md"
RUNBOOKS = "https://github.com/slotbandit/slotbandit/blob/main/docs/operations.md#"

sys.path.insert(0, str(GRAFANA))
import check  # noqa: E402
import dashboard  # noqa: E402
from queries import dashboard_panels, dashboard_queries  # noqa: E402

from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.cog.plugins import register_default_plugins  # noqa: E402
from grafana_foundation_sdk.models.dashboard import Dashboard  # noqa: E402

# Panel options and queries decode to their panel type's and data source's models.
register_default_plugins()

# Every metric the two processes export (histograms by their base name).
METRICS = {
    # the stream job
    "slotbandit_stream_records_total",
    "slotbandit_stream_events_counted_total",
    "slotbandit_stream_events_already_applied_total",
    "slotbandit_stream_repeated_clicks_total",
    "slotbandit_stream_repeated_impressions_total",
    "slotbandit_stream_events_before_cutoff_total",
    "slotbandit_stream_dead_letters_total",
    "slotbandit_stream_epochs_stored_total",
    "slotbandit_stream_store_errors_total",
    "slotbandit_stream_click_to_store_seconds",
    "slotbandit_stream_partition_lag_records",
    "slotbandit_stream_oldest_uncounted_event_age_seconds",
    "slotbandit_stream_last_epoch_stored_timestamp_seconds",
    "slotbandit_stream_group_impressions_total",
    "slotbandit_stream_group_clicks_total",
    # the lookup service
    "slotbandit_decisions_total",
    "slotbandit_tenant_decisions_total",
    "slotbandit_decision_errors_total",
    "slotbandit_clicks_total",
    "slotbandit_http_responses_total",
    "slotbandit_impressions_logged_total",
    "slotbandit_impressions_spooled_total",
    "slotbandit_cache_refreshes_total",
    "slotbandit_cache_refresh_failures_total",
    "slotbandit_auth_failures_total",
    "slotbandit_store_errors_total",
    "slotbandit_decision_seconds",
    "slotbandit_cache_refresh_seconds",
    "slotbandit_cache_refresh_changed_shards",
    "slotbandit_spool_pending_events",
    "slotbandit_event_log_up",
    "slotbandit_cache_age_seconds",
    "slotbandit_cache_unchanged_seconds",
    "slotbandit_cache_slots",
    "slotbandit_cache_arms",
}
HISTOGRAMS = {
    "slotbandit_stream_click_to_store_seconds",
    "slotbandit_decision_seconds",
    "slotbandit_cache_refresh_seconds",
    "slotbandit_cache_refresh_changed_shards",
}
ALERT_NAMES = {
    "SlotbanditTargetDown",
    "SlotbanditStreamLag",
    "SlotbanditOldestUncountedEvent",
    "SlotbanditEpochsNotStored",
    "SlotbanditDeadLetters",
    "SlotbanditStoreErrors",
    "SlotbanditServeCacheStale",
    "SlotbanditSpoolGrowing",
    "SlotbanditClicksUnavailable",
    "SlotbanditDecisionLatencyHigh",
    "SlotbanditErrorRatio",
}


def promtool(*args):
    tool = shutil.which("promtool")
    assert tool, "promtool is needed (Debian package prometheus; scripts/install.sh installs it)"
    return subprocess.run([tool, *args], capture_output=True, text=True)


def metric_names(expr):
    """The slotbandit metrics an expression reads, histogram series by their base name."""
    names = set()
    for name in re.findall(r"\bslotbandit_[a-z_]+\b", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def alert_rules():
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    assert group["name"] == "slotbandit"
    return group["rules"]


def github_anchors(markdown):
    """The anchors GitHub gives a page's headings."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


# The alert rules

def test_the_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_example_prometheus_config_is_valid():
    checked = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_is_labelled_annotated_and_has_a_runbook_section():
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERT_NAMES
    anchors = github_anchors(OPERATIONS.read_text())
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        assert "{{ $" in rule["annotations"]["description"], name
        assert rule["annotations"]["runbook_url"] == RUNBOOKS + name.lower(), name
        assert name.lower() in anchors, f"docs/operations.md has no section for {name}"


def test_every_alert_reads_exported_metrics_with_durations_that_can_be_scaled():
    unit_tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    tested = {a["alertname"] for t in unit_tests["tests"] for a in t["alert_rule_test"]
              if a.get("exp_alerts")}
    for rule in alert_rules():
        expr = rule["expr"]
        assert metric_names(expr) <= METRICS, (rule["alert"], metric_names(expr) - METRICS)
        # Ranges in whole minutes and a `for:` on every alert: the live test scales both.
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        assert all(re.fullmatch(r"\d+m", r) for r in re.findall(r"\[([^\]]+)\]", expr)), expr
        assert rule["alert"] in tested, f"{rule['alert']} has no unit test where it fires"


def broken_copy(tmp_path, name, old, new):
    text = ALERTS.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    line = text[: text.index(old)].count("\n") + 1
    return path, line


def test_promtool_names_the_file_and_line_of_a_broken_expression(tmp_path):
    path, line = broken_copy(
        tmp_path, "broken-expr.yml",
        "expr: slotbandit_stream_partition_lag_records > 10000",
        "expr: slotbandit_stream_partition_lag_records > > 10000",
    )
    out = promtool("check", "rules", str(path))
    assert out.returncode != 0
    assert f"{path}: {line}:" in out.stdout + out.stderr, out.stdout + out.stderr
    assert "SlotbanditStreamLag" in out.stdout + out.stderr


def test_promtool_names_the_file_and_line_of_a_yaml_syntax_error(tmp_path):
    path, line = broken_copy(
        tmp_path, "broken-yaml.yml",
        "alert: SlotbanditStreamLag", "alert: SlotbanditStreamLag: again",
    )
    out = promtool("check", "rules", str(path))
    assert out.returncode != 0
    assert f"{path}: yaml: line {line}:" in out.stdout + out.stderr, out.stdout + out.stderr


# The dashboard

def test_the_committed_dashboard_is_what_dashboard_py_builds():
    committed = (GRAFANA / "slotbandit.json").read_text()
    assert dashboard.render() == committed, "run deploy/grafana/dashboard.py and commit the JSON"


def test_the_dashboard_round_trips_through_the_sdk_model():
    data = json.loads((GRAFANA / "slotbandit.json").read_text())
    model = Dashboard.from_json(data)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == data


def test_the_dashboard_has_its_variables_and_passes_the_checker():
    data = json.loads((GRAFANA / "slotbandit.json").read_text())
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tenant"]["query"] == "label_values(slotbandit_tenant_decisions_total, tenant)"
    assert variables["tenant"]["datasource"]["uid"] == "${datasource}"
    assert check.problems(GRAFANA / "slotbandit.json") == []


def test_every_panel_queries_exported_metrics():
    panels = dashboard_panels()
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert any(t.get("expr", "").strip() for t in panel["targets"]), panel["title"]
    queries = dashboard_queries()
    used = set()
    for title, expr in queries:
        assert "$" not in expr, (title, expr)
        assert metric_names(expr) <= METRICS, (title, metric_names(expr) - METRICS)
        used |= metric_names(expr)
    assert used == METRICS, f"metrics on no panel: {METRICS - used}"


@pytest.mark.parametrize("old, new, message", [
    ('"h": 4,', '"h": "four",', 'gridPos.h: expected int, got str "four"'),
    ('"title": "Cache age"', '"title": 5', "title: expected str, got int 5"),
    ('"displayMode": "list"', '"displayMode": "lists"', "displayMode: expected one of"),
    ('"legendFormat": "{{job}}"', '"legendFormat": ["job"]', "legendFormat: expected str"),
    ('"gridPos": {', '"gridPosition": {', "gridPosition: not a field of"),
    ('"unit": "s"', '"unit": "s",,', "invalid JSON"),
])
def test_the_checker_refuses_a_malformed_dashboard_with_file_and_line(tmp_path, old, new, message):
    text = (GRAFANA / "slotbandit.json").read_text()
    assert old in text
    line = text[: text.index(old)].count("\n") + 1
    path = tmp_path / "dashboard.json"
    path.write_text(text.replace(old, new, 1))
    out = subprocess.run(
        [sys.executable, str(GRAFANA / "check.py"), str(path)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.startswith(f"{path}:{line}: "), out.stderr
    assert message in out.stderr, out.stderr
