"""Builds the slotbandit Grafana dashboard with the Grafana Foundation SDK and writes it to
deploy/grafana/slotbandit.json (run `python deploy/grafana/dashboard.py` after a change and
commit both; tests/py/test_operations_config.py checks that they agree).

Every panel is PromQL on the metrics of the stream job (Prometheus job `slotbandit-stream`) and
the lookup service (`slotbandit-serve`), through the `${datasource}` variable."""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboards
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DynamicConfigValue,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).resolve().parent / "slotbandit.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "[$__rate_interval]"


@dataclass
class Query:
    expr: str
    legend: str


@dataclass
class PanelSpec:
    title: str
    description: str
    unit: str
    queries: list[Query]
    kind: str = "timeseries"
    width: int = 12
    # Queries (by refId) drawn on a right axis in their own unit: e.g. a 0/1 gauge beside a count.
    right_axis: dict[str, str] = field(default_factory=dict)


def quantiles(histogram, by=""):
    """p50 and p99 of a histogram's rate, optionally per label."""
    labels = f"{by}, le" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        Query(
            f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{RATE})))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in (0.5, 0.99)
    ]


OVERVIEW = [
    PanelSpec("Targets up", "Scrape targets answering, per job (`up`).", "none",
              [Query('sum by (job) (up{job=~"slotbandit-stream|slotbandit-serve"})', "{{job}}")],
              kind="stat", width=6),
    PanelSpec("Event log up", "Lookup service replicas that can append to the event log.", "none",
              [Query("sum(slotbandit_event_log_up)", "up")], kind="stat", width=6),
    PanelSpec("Cached slots", "Slots in the lookup services' posterior caches.", "none",
              [Query("sum(slotbandit_cache_slots)", "slots")], kind="stat", width=6),
    PanelSpec("Cached arms", "Arms (banner, slot, city) in the lookup services' caches.", "none",
              [Query("sum(slotbandit_cache_arms)", "arms")], kind="stat", width=6),
]

STREAM = [
    PanelSpec(
        "Job throughput",
        "Records read from the event log and what became of them, per second.",
        "ops",
        [
            Query(f"sum(rate(slotbandit_stream_records_total{RATE}))", "records read"),
            Query(f"sum(rate(slotbandit_stream_events_counted_total{RATE}))", "events counted"),
            Query(f"sum(rate(slotbandit_stream_events_already_applied_total{RATE}))",
                  "already applied (skipped)"),
            Query(f"sum(rate(slotbandit_stream_repeated_clicks_total{RATE}))",
                  "repeated clicks (skipped)"),
            Query(f"sum(rate(slotbandit_stream_repeated_impressions_total{RATE}))",
                  "impressions sent again (skipped)"),
            Query(f"sum(rate(slotbandit_stream_events_before_cutoff_total{RATE}))",
                  "before the handoff cutoff (skipped)"),
            Query(f"sum(rate(slotbandit_stream_epochs_stored_total{RATE}))", "epochs stored"),
        ],
    ),
    PanelSpec(
        "Stream lag per partition",
        "Log end offset minus the offset stored as counted, per log partition.",
        "short",
        [Query("max by (partition) (slotbandit_stream_partition_lag_records)",
               "partition {{partition}}")],
    ),
    PanelSpec(
        "Oldest uncounted event age",
        "How long the oldest event not yet counted has waited (0 when caught up), and the time "
        "since each process last stored an epoch.",
        "s",
        [
            Query("max by (instance) (slotbandit_stream_oldest_uncounted_event_age_seconds)",
                  "oldest uncounted {{instance}}"),
            Query("time() - max by (instance) "
                  "(slotbandit_stream_last_epoch_stored_timestamp_seconds)",
                  "since last epoch {{instance}}"),
        ],
    ),
    PanelSpec(
        "Click-to-store latency",
        "From a click's append to the log until its count is in the store.",
        "s",
        quantiles("slotbandit_stream_click_to_store_seconds"),
    ),
    PanelSpec(
        "Dead letters per second",
        "Malformed messages sent to the dead-letter log, per process.",
        "ops",
        [Query(f"sum by (instance) (rate(slotbandit_stream_dead_letters_total{RATE}))",
               "{{instance}}")],
    ),
    PanelSpec(
        "Store errors per second",
        "Failed store operation attempts (retried ones too) of the stream job and the lookup "
        "service.",
        "ops",
        [
            Query(f"sum by (instance) (rate(slotbandit_stream_store_errors_total{RATE}))",
                  "stream {{instance}}"),
            Query(f"sum by (instance) (rate(slotbandit_store_errors_total{RATE}))",
                  "serve {{instance}}"),
        ],
    ),
]

SERVE = [
    PanelSpec(
        "Decisions per second",
        "Decisions answered and decision requests refused, per replica.",
        "ops",
        [
            Query(f"sum by (instance) (rate(slotbandit_decisions_total{RATE}))",
                  "decisions {{instance}}"),
            Query(f"sum by (instance) (rate(slotbandit_decision_errors_total{RATE}))",
                  "refused {{instance}}"),
        ],
    ),
    PanelSpec(
        "Decisions per second by tenant",
        "Decisions per tenant (the `tenant` variable picks which).",
        "ops",
        [Query('sum by (tenant) (rate(slotbandit_tenant_decisions_total{tenant=~"$tenant"}'
               f"{RATE}))", "{{tenant}}")],
    ),
    PanelSpec(
        "Decision latency",
        "Time to answer a decision, per replica.",
        "s",
        quantiles("slotbandit_decision_seconds", by="instance"),
    ),
    PanelSpec(
        "Clicks by outcome",
        "Clicks accepted, rejected (bad token or input) and unavailable (503: event log down).",
        "ops",
        [Query(f"sum by (outcome) (rate(slotbandit_clicks_total{RATE}))", "{{outcome}}")],
    ),
    PanelSpec(
        "HTTP responses by class",
        "Responses of the lookup service by status class, and refused API keys.",
        "ops",
        [
            Query(f"sum by (class) (rate(slotbandit_http_responses_total{RATE}))", "{{class}}"),
            Query(f"sum(rate(slotbandit_auth_failures_total{RATE}))", "auth failures"),
        ],
    ),
    PanelSpec(
        "Cache age",
        "Seconds since each replica last checked its cache against the store (every 250 ms by "
        "default), and since a check last found new counts, slots or priors.",
        "s",
        [
            Query("max by (instance) (slotbandit_cache_age_seconds)", "checked {{instance}}"),
            Query("max by (instance) (slotbandit_cache_unchanged_seconds)",
                  "changed {{instance}}"),
        ],
    ),
    PanelSpec(
        "Cache refresh duration",
        "How long a refresh of the posterior cache takes, per replica.",
        "s",
        quantiles("slotbandit_cache_refresh_seconds", by="instance"),
    ),
    PanelSpec(
        "Cache refreshes and changed shards",
        "Refreshes and failed refreshes per second, and the shards a refresh reads on average "
        "(only those whose version moved).",
        "ops",
        [
            Query(f"sum(rate(slotbandit_cache_refreshes_total{RATE}))", "refreshes"),
            Query(f"sum(rate(slotbandit_cache_refresh_failures_total{RATE}))", "failures"),
            Query(f"sum(rate(slotbandit_cache_refresh_changed_shards_sum{RATE})) / "
                  f"sum(rate(slotbandit_cache_refresh_changed_shards_count{RATE}))",
                  "changed shards per refresh"),
        ],
        right_axis={"C": "short"},
    ),
    PanelSpec(
        "Impressions out",
        "Impressions appended to the event log and impressions spooled locally, per second.",
        "ops",
        [
            Query(f"sum(rate(slotbandit_impressions_logged_total{RATE}))", "logged"),
            Query(f"sum(rate(slotbandit_impressions_spooled_total{RATE}))", "spooled"),
        ],
    ),
    PanelSpec(
        "Spool pending and event log up",
        "Impressions waiting in each replica's spool, and whether its event log is up (1/0, "
        "right axis).",
        "short",
        [
            Query("max by (instance) (slotbandit_spool_pending_events)", "pending {{instance}}"),
            Query("max by (instance) (slotbandit_event_log_up)", "log up {{instance}}"),
        ],
        right_axis={"B": "bool_yes_no"},
    ),
]



def group_increase(counter, group):
    """A decision group's stored impressions or clicks per (tenant, slot) over the dashboard's
    time range (the stream job's counters, after its deduplication)."""
    return (f"sum by (tenant, slot) (increase(slotbandit_stream_group_{counter}_total"
            f'{{group="{group}", tenant=~"$tenant"}}[$__range]))')


def uplift_queries():
    """TS's CTR minus the holdout's in percentage points with a 95% Wald interval, and the extra
    clicks it earned (the difference times TS's impressions), per (tenant, slot); a slot without
    holdout impressions in the range has no value. `slotbandit report` gives the exact counts
    and a Newcombe interval."""
    ts_impressions = group_increase("impressions", "thompson")
    holdout_impressions = group_increase("impressions", "holdout")
    ts = f'({group_increase("clicks", "thompson")} / {ts_impressions})'
    holdout = f'({group_increase("clicks", "holdout")} / {holdout_impressions})'
    difference = f"({ts} - {holdout})"
    error = (f"sqrt({ts} * (1 - {ts}) / {ts_impressions} + "
             f"{holdout} * (1 - {holdout}) / {holdout_impressions})")
    return {
        "uplift": Query(f"100 * {difference}", "{{tenant}}/{{slot}} uplift"),
        "low": Query(f"100 * ({difference} - 1.96 * {error})", "{{tenant}}/{{slot}} low 95%"),
        "high": Query(f"100 * ({difference} + 1.96 * {error})", "{{tenant}}/{{slot}} high 95%"),
        "extra_clicks": Query(f"{difference} * {ts_impressions}", "{{tenant}}/{{slot}}"),
    }


UPLIFT = uplift_queries()

EARNED = [
    PanelSpec(
        "Uplift over the holdout",
        "Thompson sampling's CTR minus the holdout's (uniform choice) over the dashboard's time "
        "range, in percentage points, with a 95% interval, per slot with a holdout. The exact "
        "figures: `slotbandit report` (docs/evaluation.md).",
        "suffix: pp",
        [UPLIFT["uplift"], UPLIFT["low"], UPLIFT["high"]],
        kind="stat",
    ),
    PanelSpec(
        "Extra clicks earned",
        "Clicks Thompson sampling earned beyond what uniform choice would have on the same "
        "impressions, over the dashboard's time range, per slot with a holdout.",
        "short",
        [UPLIFT["extra_clicks"]],
        kind="stat",
    ),
    PanelSpec(
        "CTR by decision group",
        "Clicks per impression of Thompson sampling's decisions and of the holdout's, over the "
        "hour before each point (decisions logged without a group are left out).",
        "percentunit",
        [Query(f'sum by (group) (increase(slotbandit_stream_group_clicks_total'
               f'{{tenant=~"$tenant"}}[1h])) / sum by (group) '
               f'(increase(slotbandit_stream_group_impressions_total{{tenant=~"$tenant"}}[1h]))',
               "{{group}}")],
        width=24,
    ),
]


def target(ref_id, query):
    return (
        prometheus.Dataquery()
        .ref_id(ref_id)
        .expr(query.expr)
        .legend_format(query.legend)
        .datasource(DATASOURCE)
    )


def panel(panel_id, spec):
    builder = stat.Panel() if spec.kind == "stat" else timeseries.Panel()
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .span(spec.width)
        .height(4 if spec.kind == "stat" else 8)
    )
    for i, query in enumerate(spec.queries):
        builder = builder.with_target(target(chr(ord("A") + i), query))
    if spec.kind == "timeseries":
        builder = builder.line_width(1).fill_opacity(10).legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    for ref_id, unit in spec.right_axis.items():
        builder = builder.override_by_query(ref_id, [
            DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            DynamicConfigValue(id_val="unit", value=unit),
        ])
    return builder


def build():
    dashboard = (
        dashboards.Dashboard("slotbandit")
        .uid("slotbandit")
        .description("The stream job and the lookup service; runbooks in docs/operations.md.")
        .tags(["slotbandit"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(
            dashboards.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dashboards.QueryVariable("tenant")
            .label("Tenant")
            .datasource(DATASOURCE)
            .query("label_values(slotbandit_tenant_decisions_total, tenant)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    panel_ids = iter(range(1, 1000))
    rows = (("Overview", OVERVIEW), ("What the bandit earned", EARNED), ("Stream job", STREAM),
            ("Lookup service", SERVE))
    for title, specs in rows:
        dashboard = dashboard.with_row(dashboards.Row(title).id(next(panel_ids)))
        for spec in specs:
            dashboard = dashboard.with_panel(panel(next(panel_ids), spec))
    return dashboard.build()


def render():
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}", file=sys.stderr)
