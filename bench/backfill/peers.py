"""The backfill aggregation by a peer engine, for bench/backfill/run.sh.

Usage: peers.py duckdb|pyspark|duckdb-hourly|duckdb-all-time PARQUET_DIR OUT_CSV
       peers.py duckdb-windows PARQUET_DIR OUT_PREFIX MINUTES...
Counts impressions and clicks per (tenant, slot, city, banner, IST hour) and per arm all-time
(hour -1), as `slotbandit backfill` does, and writes the all-time rows as CSV.
duckdb-hourly only computes the hourly counts (a table in memory; writes the number of rows),
duckdb-all-time only the all-time counts (written as CSV): the two halves of the job, timed
apart in bench/backfill/scale.sh.
duckdb-windows is bench/scale/run.sh's independent recount: for each window of MINUTES ending at
the newest event (whole seconds) it writes OUT_PREFIX-MINUTES.csv, the counts per arm over the
whole IST hours that start at or after the window's start, as `slotbandit posteriors
--window-minutes MINUTES --now NOW` reads a store (the first six columns of `posteriors --format
csv`, arms without counts left out, rows in name order), and prints NOW (RFC 3339, UTC).
"""
import sys

engine, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
IST_OFFSET = 19800
HOUR = 3600


def hourly_table(con):
    """The counts per (arm, IST hour) of the history, as the table `hourly`."""
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


if engine == "duckdb":
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(
        f"""
        CREATE TABLE counts AS
        SELECT tenant, slot, city, banner,
               coalesce(floor((epoch(ts) + {IST_OFFSET}) / 3600)::BIGINT, -1) AS bucket,
               count(*) FILTER (WHERE kind = 'impression') AS impressions,
               count(*) FILTER (WHERE kind = 'click') AS clicks
        FROM read_parquet('{data}/**/*.parquet')
        GROUP BY GROUPING SETS ((tenant, slot, city, banner, floor((epoch(ts) + {IST_OFFSET}) / 3600)),
                                (tenant, slot, city, banner))
        """
    )
    con.execute(
        f"COPY (SELECT tenant, slot, city, banner, impressions, clicks FROM counts WHERE bucket = -1 "
        f"ORDER BY ALL) TO '{out}' (HEADER)"
    )
elif engine == "duckdb-hourly":
    import duckdb

    con = duckdb.connect()
    hourly_table(con)
    with open(out, "w") as f:
        f.write(f"{con.execute('SELECT count(*) FROM hourly').fetchone()[0]}\n")
elif engine == "duckdb-windows":
    from datetime import datetime, timezone

    import duckdb

    windows = [int(m) for m in sys.argv[4:]]
    if not windows or any(m <= 0 for m in windows):
        sys.exit("peers.py duckdb-windows: give one or more window lengths in minutes, each above 0")
    con = duckdb.connect()
    hourly_table(con)
    # The newest event in whole seconds since the epoch (in SQL: no time zones in Python).
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
                  ORDER BY ALL) TO '{out}-{minutes}.csv' (HEADER)
            """
        )
    print(datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
elif engine == "duckdb-all-time":
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(
        f"""
        COPY (SELECT tenant, slot, city, banner,
                     count(*) FILTER (WHERE kind = 'impression') AS impressions,
                     count(*) FILTER (WHERE kind = 'click') AS clicks
              FROM read_parquet('{data}/**/*.parquet')
              GROUP BY ALL ORDER BY ALL) TO '{out}' (HEADER)
        """
    )
elif engine == "pyspark":
    from pyspark.sql import SparkSession, functions as F

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("slotbandit-bench")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    events = spark.read.option("recursiveFileLookup", "true").option("pathGlobFilter", "*.parquet").parquet(data)
    bucket = F.floor((F.unix_timestamp("ts") + IST_OFFSET) / 3600)
    keys = ["tenant", "slot", "city", "banner"]
    hourly = events.groupBy(*keys, bucket.alias("bucket")).agg(
        F.sum(F.when(F.col("kind") == "impression", 1).otherwise(0)).alias("impressions"),
        F.sum(F.when(F.col("kind") == "click", 1).otherwise(0)).alias("clicks"),
    )
    hourly = hourly.cache()
    hourly.count()
    totals = hourly.groupBy(*keys).agg(F.sum("impressions").alias("impressions"), F.sum("clicks").alias("clicks"))
    rows = sorted(totals.collect())
    with open(out, "w") as f:
        f.write("tenant,slot,city,banner,impressions,clicks\n")
        for r in rows:
            f.write(f"{r.tenant},{r.slot},{r.city},{r.banner},{r.impressions},{r.clicks}\n")
    spark.stop()
else:
    sys.exit(f"unknown engine {engine!r}: use duckdb or pyspark")
