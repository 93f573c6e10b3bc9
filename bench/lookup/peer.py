"""The Python peer of bench/lookup: a minimal Thompson-sampling decision service (FastAPI,
counts in memory per worker), answering the same decision route as slotbandit."""
import random
import uuid

from fastapi import FastAPI, HTTPException

BANNERS = [f"b{i:02d}" for i in range(1, 11)]
counts: dict[tuple[str, str, str, str], list[int]] = {}
app = FastAPI()


@app.get("/v1/tenants/{tenant}/slots/{slot}/decision")
async def decision(tenant: str, slot: str, city: str, n: int = 1):
    if not 1 <= n <= len(BANNERS):
        raise HTTPException(400, "n must be from 1 to 10")
    draws = []
    for b in BANNERS:
        imp, clk = counts.get((tenant, slot, city, b), (0, 0))
        draws.append((random.betavariate(1 + clk, 1 + imp - clk), b))
    draws.sort(reverse=True)
    chosen = [b for _, b in draws[:n]]
    for b in chosen:
        counts.setdefault((tenant, slot, city, b), [0, 0])[0] += 1
    return {
        "request_id": uuid.uuid4().hex,
        "banners": [{"banner": b, "image": f"{b}.svg", "rank": i + 1} for i, b in enumerate(chosen)],
    }


@app.post("/v1/tenants/{tenant}/clicks")
async def click(tenant: str, body: dict):
    key = (tenant, body["slot"], body["city"], body["banner"])
    counts.setdefault(key, [0, 0])[1] += 1
    return {"status": "accepted"}
