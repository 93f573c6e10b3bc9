"""The report's peer: DuckDB over the same Parquet history, and the history's preparation.

  peer.py holdout GEN OUT      the generated history with a decision-log `holdout` column (one
                               request in ten held out, by a hash of its request_id; clicks
                               without the flag, as the service logs them)
  peer.py report IN FROM TO OUT.csv   the report's counts: the range's flagged impressions,
                               each joined to its first click by (request_id, banner), per
                               (tenant, slot, holdout)
  peer.py scan IN              a scan of the same columns, nothing joined (the ceiling)
DuckDB runs on 2 threads, as slotbandit does with -w 2.
"""
import sys

import duckdb


def connect():
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    return con


def history(path):
    return f"read_parquet('{path}/**/*.parquet', hive_partitioning = false)"


def holdout(gen, out):
    connect().execute(
        f"""COPY (SELECT * REPLACE (
                CASE WHEN kind = 'impression' THEN hash(request_id) % 10 = 0 END AS holdout)
                FROM {history(gen)})
            TO '{out}' (FORMAT parquet, PER_THREAD_OUTPUT, ROW_GROUP_SIZE 262144)"""
    )


REPORT = """
WITH impressions AS (
    SELECT request_id, banner, tenant, slot, holdout FROM {h}
    WHERE kind = 'impression' AND holdout IS NOT NULL
      AND ts >= TIMESTAMPTZ '{start}' AND ts < TIMESTAMPTZ '{end}'),
clicked AS (
    SELECT DISTINCT request_id, banner FROM {h}
    WHERE kind = 'click' AND request_id IS NOT NULL)
SELECT tenant, slot, holdout, count(*) AS impressions, count(clicked.request_id) AS clicks
FROM impressions LEFT JOIN clicked USING (request_id, banner)
GROUP BY ALL ORDER BY ALL
"""


def report(path, start, end, out):
    con = connect()
    rows = con.execute(REPORT.format(h=history(path), start=start, end=end)).fetchall()
    with open(out, "w") as f:
        for tenant, slot, held, impressions, clicks in rows:
            f.write(f"{tenant},{slot},{str(held).lower()},{impressions},{clicks}\n")


def scan(path):
    con = connect()
    print(con.execute(
        f"""SELECT count(*), sum(length(request_id) + length(banner) + length(tenant)
                + length(slot) + length(kind)), count(ts), count(holdout) FROM {history(path)}"""
    ).fetchone())


if __name__ == "__main__":
    {"holdout": holdout, "report": report, "scan": scan}[sys.argv[1]](*sys.argv[2:])
