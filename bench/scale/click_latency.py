"""Click-to-decision latency for bench/scale/run.sh (standard library only).

Usage: click_latency.py BASE_URL KEYS_TSV TARGETS_TSV CLICKS OUT_JSON [TIMEOUT_S]

KEYS_TSV: "tenant<TAB>key" lines; TARGETS_TSV: "tenant<TAB>slot<TAB>city" lines. For each of CLICKS
samples, on a random (tenant, slot, city): a decision (GET .../decision), the chosen banner's
clicks as the service sees them (GET .../posteriors?city=), a click on it (POST .../clicks with
the decision's request_id), then the posteriors polled every 10 ms until that banner's clicks
have grown. The latency is from just before the click is sent to the first poll that shows it:
log append, the stream job's epoch and store write, and the service's cache refresh. Writes
every sample and a summary (p50, p90, max) to OUT_JSON and prints the summary.
"""
import http.client
import json
import random
import statistics
import sys
import time
from urllib.parse import urlsplit

base, keys_tsv, targets_tsv, clicks, out = sys.argv[1:6]
timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 30.0
clicks = int(clicks)
keys = dict(line.rstrip("\n").split("\t") for line in open(keys_tsv) if line.strip())
targets = [tuple(line.rstrip("\n").split("\t")) for line in open(targets_tsv) if line.strip()]
url = urlsplit(base)
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
rng = random.Random(11)


def call(method, path, key, body=None):
    headers = {"Authorization": f"Bearer {key}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    if resp.status >= 300:
        sys.exit(f"click_latency.py: {method} {path} answered {resp.status}: {payload[:300]!r}")
    return json.loads(payload)


def seen_clicks(tenant, slot, city, banner, key):
    doc = call("GET", f"/v1/tenants/{tenant}/slots/{slot}/posteriors?city={city}", key)
    for c in doc["cities"]:
        if c["city"] == city:
            for b in c["banners"]:
                if b["banner"] == banner:
                    return b["clicks"]
    sys.exit(f"click_latency.py: no posterior for {tenant}/{slot}/{city}/{banner} in {doc}")


samples = []
for i in range(clicks):
    tenant, slot, city = rng.choice(targets)
    key = keys[tenant]
    decision = call("GET", f"/v1/tenants/{tenant}/slots/{slot}/decision?city={city}", key)
    banner = decision["banners"][0]["banner"]
    before = seen_clicks(tenant, slot, city, banner, key)
    t0 = time.monotonic()
    call("POST", f"/v1/tenants/{tenant}/clicks", key, {"request_id": decision["request_id"], "banner": banner})
    accepted = time.monotonic() - t0
    polls = 0
    while True:
        polls += 1
        if seen_clicks(tenant, slot, city, banner, key) > before:
            break
        if time.monotonic() - t0 > timeout:
            sys.exit(f"click_latency.py: the click on {tenant}/{slot}/{city}/{banner} was not seen in {timeout} s")
        time.sleep(0.01)
    latency = time.monotonic() - t0
    samples.append({"tenant": tenant, "slot": slot, "city": city, "banner": banner,
                    "click_accepted_ms": round(accepted * 1000, 2), "visible_ms": round(latency * 1000, 1),
                    "polls": polls})
    time.sleep(rng.uniform(0.05, 0.3))  # do not stay in step with the epochs and refreshes

vis = sorted(s["visible_ms"] for s in samples)
acc = sorted(s["click_accepted_ms"] for s in samples)


def pct(xs, p):
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


summary = {"clicks": len(samples), "visible_p50_ms": statistics.median(vis), "visible_p90_ms": pct(vis, 90),
           "visible_max_ms": vis[-1], "visible_min_ms": vis[0], "accepted_p50_ms": statistics.median(acc),
           "accepted_max_ms": acc[-1]}
json.dump({"summary": summary, "samples": samples}, open(out, "w"), indent=1)
print(json.dumps(summary))
