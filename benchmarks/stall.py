"""Search latency while index snapshots run: search p99 with and without a trickle of writes.

A Flat collection (640-d; 150,000 vectors in a full run, as the issue measured, 10,000 with --quick) is
searched by 4 clients for a while with no writes: nothing changes, so nothing is snapshotted. Then for
as long again while one small upsert lands every half second: each leaves the index dirty, so it is
snapshotted (every ``EMBEDSEARCH_SNAPSHOT_SECONDS``, at most every 10x the last file's write time). The
ratio of the two p99s is what snapshots (and the writes themselves) cost searches; the target is 1.5x.
Snapshots taken in each phase are read from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import re
import time

import msgspec
import numpy as np

from benchmarks.context import Context, wire_vector
from benchmarks.load import LoadClient, check, percentiles_ms

CLIENTS = 4
WRITE_EVERY_S = 0.5
TARGET = 1.5
SNAPSHOTS = re.compile(r'^embedsearch_index_snapshots_total\{collection="(\d+)"\} (\S+)$', re.M)


def snapshots(ctx: Context) -> int | None:
    """Index snapshots the server has taken since it started, all collections together (None: a server
    that does not count them)."""
    found = SNAPSHOTS.findall(ctx.http.get("/metrics").text)
    return int(sum(float(count) for _, count in found)) if found else None


def settle(ctx: Context, deadline_s: float = 90.0) -> None:
    """Wait for the snapshot that follows loading the collection, so that the phase without writes has
    none (a server that does not count snapshots: wait past its default interval and spacing instead)."""
    before = snapshots(ctx)
    if before is None:
        time.sleep(30)
        return
    give_up = time.monotonic() + deadline_s
    while snapshots(ctx) == before and time.monotonic() < give_up:
        time.sleep(0.5)


async def _phase(ctx: Context, name: str, bodies: list[bytes], dimension: int, seconds: float,
                 writes: bool) -> dict:
    path = f"/v1/collections/{name}/search"
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    written = 0

    async def search(http: LoadClient, first: int) -> None:
        i = first
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await http.post(path, bodies[i % len(bodies)])
            latencies.append(time.perf_counter() - began)
            i += CLIENTS

    async def trickle(http: LoadClient) -> None:
        nonlocal written
        rng = np.random.default_rng(0)
        while time.perf_counter() < stop:
            vector = rng.standard_normal(dimension).astype(np.float32).tolist()
            await http.post(f"/v1/collections/{name}/documents",
                            {"documents": [{"id": f"trickle-{written % 50}", "vector": vector}]})
            written += 1
            await asyncio.sleep(WRITE_EVERY_S)

    async with LoadClient(ctx.target, CLIENTS + 1) as http:
        await asyncio.gather(*(search(http, k) for k in range(CLIENTS)), *([trickle(http)] if writes else []))
    summary = percentiles_ms(np.array(latencies))
    summary.update(max_ms=max(latencies) * 1000, requests=len(latencies), qps=len(latencies) / seconds,
                   writes=written)
    return summary


def run(ctx: Context) -> dict:
    size = ctx.profile.stall_size
    seconds = ctx.profile.stall_seconds
    loaded = ctx.collection("Flat", size)
    vs = ctx.vectors(size)
    bodies = [msgspec.json.encode({"vector": wire_vector(q), "top_k": 10}) for q in vs.queries]
    check(ctx.http.post(f"/v1/collections/{loaded.name}/search", json={"vector": vs.queries[0].tolist()}))
    settle(ctx)
    phases = {}
    for label, writes in (("searches alone", False), ("searches, a write every 0.5 s, snapshots", True)):
        taken = snapshots(ctx)
        phases[label] = asyncio.run(_phase(ctx, loaded.name, bodies, vs.dimension, seconds, writes))
        phases[label]["snapshots"] = None if taken is None else snapshots(ctx) - taken
    alone, trickled = phases.values()
    ratio = trickled["p99_ms"] / alone["p99_ms"]
    return {"status": "ok", "size": size, "index": "Flat", "dimension": vs.dimension, "clients": CLIENTS,
            "seconds_per_phase": seconds, "phases": phases,
            "target": {"name": "search p99 with writes and snapshots / alone", "value": ratio,
                       "target": f"<= {TARGET}", "met": ratio <= TARGET}}
