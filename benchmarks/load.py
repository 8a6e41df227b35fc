"""A bounded, closed-loop async load generator: N requests at a fixed concurrency, latency percentiles.

``concurrency`` workers share one counter; each sends its next request as soon as its previous one
is answered, so exactly ``concurrency`` requests are in flight until the counter runs out. Every
request must succeed: a non-2xx answer aborts the run (a benchmark of errors is no benchmark).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp
import httpx
import msgspec
import numpy as np
from tqdm import tqdm


class RequestFailed(RuntimeError):
    pass


def check(response: httpx.Response) -> dict:
    if response.status_code >= 300:
        raise RequestFailed(f"{response.request.method} {response.request.url.path} -> "
                            f"{response.status_code}: {response.text[:500]}")
    return response.json()


def percentiles_ms(latencies_s: np.ndarray) -> dict[str, float]:
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(ms.mean())}


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    elapsed_s: float  # first send to last answer
    latencies_s: np.ndarray
    inputs: int
    tokens: int

    def summary(self) -> dict[str, float]:
        out = percentiles_ms(self.latencies_s)
        out.update(
            requests=self.requests,
            concurrency=self.concurrency,
            elapsed_s=self.elapsed_s,
            requests_per_s=self.requests / self.elapsed_s,
            inputs_per_s=self.inputs / self.elapsed_s,
        )
        if self.tokens:
            out["tokens_per_s"] = self.tokens / self.elapsed_s
        return out


class LoadClient:
    """The load generator's HTTP client, on aiohttp: httpx's connection pool costs the client several
    milliseconds per request at 64 connections, which capped every service at about 200 requests/s."""

    def __init__(self, target, concurrency: int, timeout: float = 900.0) -> None:
        self.url = target.url
        self.session = aiohttp.ClientSession(
            headers=target.headers,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=30.0),
            connector=aiohttp.TCPConnector(limit=concurrency + 4),
        )

    async def post(self, path: str, body: Any) -> dict:
        """POST ``body`` (JSON bytes, or anything msgspec encodes) and return the decoded JSON answer."""
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        async with self.session.post(self.url + path, data=data, headers={"Content-Type": "application/json"}) as r:
            raw = await r.read()
            if r.status >= 300:
                raise RequestFailed(f"POST {path} -> {r.status}: {raw[:500].decode(errors='replace')}")
        return msgspec.json.decode(raw)

    async def __aenter__(self) -> "LoadClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()


# One request: given its index, send it and return (inputs it carried, tokens it used).
Request = Callable[[LoadClient, int], Awaitable[tuple[int, int]]]


async def _run(target, request: Request, total: int, concurrency: int, warmup: int, desc: str,
               seconds: float | None) -> LoadResult:
    async with LoadClient(target, concurrency) as http:
        if warmup:  # open the connections and let the server reach its steady state
            await asyncio.gather(*(request(http, -1 - i) for i in range(warmup)))
        latencies = np.zeros(total)
        counts = np.zeros((total, 2), dtype=np.int64)
        next_index = 0
        bar = tqdm(total=total, desc=desc, unit="req", leave=False, dynamic_ncols=True)
        # Past the time limit, no new request is sent once every worker has sent at least one.
        floor = min(total, concurrency)

        async def worker() -> None:
            nonlocal next_index
            while next_index < total:
                if seconds is not None and next_index >= floor and time.perf_counter() - run_started > seconds:
                    break
                i = next_index
                next_index += 1
                began = time.perf_counter()
                counts[i] = await request(http, i)
                latencies[i] = time.perf_counter() - began
                bar.update()

        run_started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
        finally:
            bar.close()
        elapsed = time.perf_counter() - run_started
        sent = next_index
    return LoadResult(sent, concurrency, elapsed, latencies[:sent], int(counts[:sent, 0].sum()),
                      int(counts[:sent, 1].sum()))


def run_load(target, request: Request, *, total: int, concurrency: int, warmup: int = 0, desc: str = "",
             seconds: float | None = None) -> LoadResult:
    """Send ``total`` requests with ``concurrency`` in flight (after ``warmup`` unrecorded ones).

    With ``seconds``, stop sending after that long (but not before ``concurrency`` requests): the
    result then counts the requests actually sent.
    """
    return asyncio.run(_run(target, request, total, concurrency, warmup, desc, seconds))
