"""The Python peer of bench/lookup: a minimal Thompson-sampling decision service (FastAPI,
counts in memory per worker), answering the same decision route as slotbandit.

Run as a Python shop deploys it: uvicorn[standard] with `--loop uvloop --http httptools` and one
worker per core. PEER_BANNERS (default 10) is the number of banners per slot; with
PEER_REQUIRE_FAST=1 a worker refuses to start unless its event loop is uvloop's and its HTTP
parser httptools, and GET /peerinfo says which loop and parser a worker runs, for run.sh to check.
"""
import asyncio
import contextlib
import os
import random
import sys
import uuid

from fastapi import FastAPI, HTTPException

BANNERS = [f"b{i:02d}" for i in range(1, int(os.environ.get("PEER_BANNERS", "10")) + 1)]
counts: dict[tuple[str, str, str, str], list[int]] = {}


def runtime() -> dict:
    """The event loop's class and the HTTP protocol module uvicorn loaded in this worker."""
    loop = type(asyncio.get_running_loop())
    http = sorted(
        m.rsplit(".", 1)[1].removesuffix("_impl")
        for m in sys.modules
        if m.startswith("uvicorn.protocols.http.") and m.endswith("_impl")
    )
    return {"pid": os.getpid(), "loop": f"{loop.__module__}.{loop.__qualname__}", "http": http}


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI):
    if os.environ.get("PEER_REQUIRE_FAST") == "1":
        info = runtime()
        if not info["loop"].startswith("uvloop") or info["http"] != ["httptools"]:
            raise RuntimeError(f"peer.py: not running on uvloop + httptools: {info}")
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/peerinfo")
async def peerinfo():
    return runtime()


@app.get("/v1/tenants/{tenant}/slots/{slot}/decision")
async def decision(tenant: str, slot: str, city: str, n: int = 1):
    if not 1 <= n <= len(BANNERS):
        raise HTTPException(400, f"n must be from 1 to {len(BANNERS)}")
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
