"""The (tenant, slot, city) of decisions drawn as a site's traffic would ask for them.

Usage: traffic_targets.py PARQUET_DIR OUT_TSV COUNT
Writes COUNT lines "tenant<TAB>slot<TAB>city", the targets of COUNT impressions of the history
sampled at random (DuckDB, reservoir, fixed seed): a target appears as often as the history shows
it, so busy cities and tenants come up more (the generator's traffic is skewed by city and
tenant). bench/lib/http.sh serves them with TARGETS=traffic; targets.tsv, every target once and
each equally likely, is the worst case for the lookup's caches.
"""
import sys

import duckdb

if len(sys.argv) != 4:
    sys.exit("usage: traffic_targets.py PARQUET_DIR OUT_TSV COUNT")
data, out = sys.argv[1], sys.argv[2]
if not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
    sys.exit(f"COUNT must be a whole number of at least 1 (got {sys.argv[3]!r})")
count = int(sys.argv[3])
con = duckdb.connect()
con.execute("SET threads = 2")
rows = con.execute(
    f"""
    SELECT tenant, slot, city
    FROM (
        SELECT tenant, slot, city FROM read_parquet('{data}/**/*.parquet')
        WHERE kind = 'impression'
    )
    USING SAMPLE reservoir({count} ROWS) REPEATABLE (7)
    """
).fetchall()
if not rows:
    sys.exit(f"{data}: no impressions")
with open(out, "w") as f:
    for target in rows:
        f.write("\t".join(target) + "\n")
print(len(rows), len(set(rows)))
