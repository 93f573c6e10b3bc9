"""An independent recount of a generated history with DuckDB, for bench/scale/run.sh.

Usage: recount.py PARQUET_DIR OUT_PREFIX MINUTES...
For each window of MINUTES ending at the newest event (whole seconds), writes
OUT_PREFIX-MINUTES.csv: impressions and clicks per (tenant, slot, city, banner) over the whole
IST hours that start at or after the window's start, as `slotbandit posteriors --window-minutes
MINUTES --now NOW` reads a store, in the first six columns of `posteriors --format csv` (arms
without counts in the window left out, rows in name order). Prints NOW (RFC 3339, UTC).
"""
import sys
from datetime import datetime, timezone

import duckdb

IST_OFFSET = 19800
HOUR = 3600

data, prefix, windows = sys.argv[1], sys.argv[2], [int(m) for m in sys.argv[3:]]
if not windows or any(m <= 0 for m in windows):
    sys.exit("recount.py: give one or more window lengths in minutes, each above 0")

con = duckdb.connect()
con.execute("SET threads = 2")
con.execute(
    f"""
    CREATE TABLE hourly AS
    SELECT tenant, slot, city, banner,
           floor((epoch(ts) + {IST_OFFSET}) / {HOUR})::BIGINT AS bucket,
           count(*) FILTER (WHERE kind = 'impression') AS impressions,
           count(*) FILTER (WHERE kind = 'click') AS clicks
    FROM read_parquet('{data}/**/*.parquet')
    GROUP BY ALL
    """
)
# The newest event in whole seconds since the epoch (computed in SQL: no time zones in Python).
now = con.execute(
    f"SELECT floor(max(epoch(ts)))::BIGINT FROM read_parquet('{data}/**/*.parquet')"
).fetchone()[0]
for minutes in windows:
    start = now - minutes * 60 + IST_OFFSET
    first = start // HOUR + (start % HOUR != 0)
    con.execute(
        f"""
        COPY (SELECT tenant, slot, city, banner, sum(impressions)::BIGINT AS impressions,
                     sum(clicks)::BIGINT AS clicks
              FROM hourly WHERE bucket >= {first}
              GROUP BY ALL HAVING sum(impressions) + sum(clicks) > 0
              ORDER BY ALL) TO '{prefix}-{minutes}.csv' (HEADER)
        """
    )
print(datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
