"""The PromQL of the committed dashboard (slotbandit.json), ready to send to Prometheus as is:
`dashboard_queries()` gives every (panel title, expr) pair with the dashboard's variables filled
in ($tenant as every tenant, $__rate_interval as 1m, $__range as 1h). Needs only the standard library."""

import json
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "slotbandit.json"
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__range": "1h", "$tenant": ".*"}


def dashboard_panels(path=DASHBOARD):
    """Every panel that is not a row, in dashboard order."""
    return [p for p in json.loads(Path(path).read_text())["panels"] if p["type"] != "row"]


def dashboard_queries(path=DASHBOARD):
    pairs = []
    for panel in dashboard_panels(path):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            for variable, value in SUBSTITUTIONS.items():
                expr = expr.replace(variable, value)
            pairs.append((panel["title"], expr))
    return pairs
