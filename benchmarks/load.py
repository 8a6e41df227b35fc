"""Bounded, closed-loop load generators: N requests at a fixed concurrency, latency percentiles.

``concurrency`` workers share one counter; each sends its next request as soon as its previous one
is answered, so exactly ``concurrency`` requests are in flight until the counter runs out. Every
request must succeed: a non-2xx answer aborts the run (a benchmark of errors is no benchmark).

:func:`run_load` runs the workers in this process (any request a coroutine can make);
:func:`run_process_load` spreads them over client processes of their own, each an asyncio loop with
its share of the concurrency, sending pre-built bodies, so that the client's CPU (on one core) is not
the ceiling of a fast server: the counter is shared between the processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import sys
import time
from contextlib import AbstractContextManager, nullcontext
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
    processes: int = 1  # client processes that sent them

    def summary(self) -> dict[str, float]:
        out = percentiles_ms(self.latencies_s)
        out.update(
            requests=self.requests,
            concurrency=self.concurrency,
            elapsed_s=self.elapsed_s,
            requests_per_s=self.requests / self.elapsed_s,
            inputs_per_s=self.inputs / self.elapsed_s,
            client_processes=self.processes,
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

    async def get(self, path: str) -> dict:
        """GET ``path`` and return the decoded JSON answer."""
        async with self.session.get(self.url + path) as r:
            raw = await r.read()
            if r.status >= 300:
                raise RequestFailed(f"GET {path} -> {r.status}: {raw[:500].decode(errors='replace')}")
        return msgspec.json.decode(raw)

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


# -- the load generator in processes of its own ---------------------------------------------------

MAX_CLIENT_PROCESSES = 4  # each one event loop on (at most) one core: four cores' worth of client

# What an answer carried: given its decoded JSON, (inputs, tokens). A module-level function, so that a
# client process can unpickle it by name; None counts one input and no tokens.
Counts = Callable[[dict], tuple[int, int]]


def embedding_counts(answer: dict) -> tuple[int, int]:
    """(inputs, tokens) of a POST /v1/embeddings answer."""
    return len(answer["data"]), answer["usage"]["prompt_tokens"]


def client_processes(concurrency: int, processes: int | None = None) -> int:
    """How many client processes carry ``concurrency``: ``processes`` if given, else up to
    MAX_CLIENT_PROCESSES; never more than there are requests in flight."""
    return max(1, min(processes or MAX_CLIENT_PROCESSES, concurrency))


def _shares(n: int, parts: int) -> list[int]:
    return [n // parts + (k < n % parts) for k in range(parts)]


@dataclass(frozen=True)
class _Job:
    """One client process's part of a run (pickled to it); its ``url`` and ``headers`` make it the target
    of its :class:`LoadClient`."""

    url: str
    headers: dict[str, str]
    path: str
    bodies: list[bytes] | None  # POST bodies, request i sends bodies[i % len]; None: GET
    concurrency: int  # this process's share
    warmup: int  # this process's share of the unrecorded requests
    total: int  # requests of the whole run (the shared counter's end)
    floor: int  # past ``seconds``, no request is claimed before this many were (one per worker)
    seconds: float | None
    counts: Counts | None


async def _client(job: _Job, index: int, counter, go, results) -> dict:
    async with LoadClient(job, job.concurrency) as http:
        def send(i: int) -> Awaitable[dict]:
            return http.get(job.path) if job.bodies is None else http.post(job.path, job.bodies[i % len(job.bodies)])

        warm = iter(range(job.warmup))  # opens this process's connections; bodies from the end

        async def warm_up() -> None:
            for i in warm:
                await send(-1 - i)

        await asyncio.gather(*(warm_up() for _ in range(min(job.concurrency, job.warmup))))
        results.put(("ready", index, None))
        go.wait()  # every process is warm: the parent starts its meter, then lets them all go
        latencies: list[float] = []
        inputs = tokens = 0
        began = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine

        async def worker() -> None:
            nonlocal inputs, tokens
            while True:
                with counter.get_lock():
                    i = counter.value
                    if i >= job.total or (job.seconds is not None and i >= job.floor
                                          and time.monotonic() - began > job.seconds):
                        return
                    counter.value = i + 1
                sent = time.monotonic()
                answer = await send(i)
                latencies.append(time.monotonic() - sent)
                n, t = job.counts(answer) if job.counts else (1, 0)
                inputs += n
                tokens += t

        await asyncio.gather(*(worker() for _ in range(job.concurrency)))
        ended = time.monotonic()
    return {"began": began, "ended": ended, "latencies": np.asarray(latencies), "inputs": inputs, "tokens": tokens}


def _client_main(job: _Job, index: int, counter, go, results) -> None:
    """A client process: run its share, put ("ready" | "done" | "error", index, payload) on ``results``."""
    from benchmarks.server import die_with_parent

    die_with_parent()
    try:
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        results.put(("done", index, run(_client(job, index, counter, go, results))))
    except BaseException as exc:  # noqa: BLE001 -- every failure goes to the parent, which aborts the run
        results.put(("error", index, f"{type(exc).__name__}: {exc}"))


def _mp_context():
    """forkserver where there is one (a client process then starts in milliseconds, forked from a server
    that has imported this module), else spawn; never fork: the parent may run threads (torch, tqdm)."""
    if sys.platform == "linux":
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["benchmarks.load"])
        return ctx
    return multiprocessing.get_context("spawn")


def _collect(results, procs: list, kind: str, tick: Callable[[], None] = lambda: None) -> dict[int, Any]:
    """The ``kind`` message of every client process; a failed or vanished one aborts the run."""
    got: dict[int, Any] = {}
    grace = False
    while len(got) < len(procs):
        try:
            what, index, payload = results.get(timeout=0.2)
        except queue.Empty:
            tick()
            gone = [p for i, p in enumerate(procs) if i not in got and p.exitcode is not None]
            if gone and grace:
                raise RequestFailed(f"load process {gone[0].name} exited with {gone[0].exitcode}")
            grace = bool(gone)  # what it put before exiting is in the pipe already: one more look
            continue
        grace = False
        if what == "error":
            raise RequestFailed(f"load process {index}: {payload}")
        if what == kind:
            got[index] = payload
    return got


def run_process_load(target, path: str, bodies: list[bytes] | None, *, total: int, concurrency: int,
                     processes: int | None = None, warmup: int = 0, counts: Counts | None = None,
                     seconds: float | None = None, meter: AbstractContextManager | None = None,
                     desc: str = "") -> LoadResult:
    """Send ``total`` requests to ``path`` with ``concurrency`` in flight, from client processes of their own.

    POSTs ``bodies`` (request ``i`` sends ``bodies[i % len(bodies)]``), or GETs if ``bodies`` is None.
    :func:`client_processes` picks how many processes; each takes its share of ``concurrency`` and of
    ``warmup`` (unrecorded requests that open its connections), and all of them draw the next request
    from one shared counter, as :func:`run_load`'s workers do. ``counts`` reads (inputs, tokens) out of
    each answer; ``seconds`` works as in :func:`run_load`. ``meter`` (a context manager, e.g. the
    server's CPU time) is open from the moment every process is warm until the last answer. The
    elapsed time runs from the first send to the last answer over all processes.
    """
    ctx = _mp_context()
    n = client_processes(concurrency, processes)
    counter, go, results = ctx.Value("q", 0), ctx.Event(), ctx.Queue()
    floor = min(total, concurrency)
    jobs = [_Job(target.url, dict(target.headers), path, bodies, c, w, total, floor, seconds, counts)
            for c, w in zip(_shares(concurrency, n), _shares(warmup, n))]
    procs = [ctx.Process(target=_client_main, args=(job, k, counter, go, results), name=f"load-{k}", daemon=True)
             for k, job in enumerate(jobs)]
    bar = tqdm(total=total, desc=desc, unit="req", leave=False, dynamic_ncols=True)
    try:
        for proc in procs:
            proc.start()
        _collect(results, procs, "ready")
        with meter or nullcontext():
            go.set()
            done = _collect(results, procs, "done", tick=lambda: bar.update(counter.value - bar.n))
    finally:
        bar.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    parts = list(done.values())
    latencies = np.concatenate([p["latencies"] for p in parts])
    elapsed = max(p["ended"] for p in parts) - min(p["began"] for p in parts)
    return LoadResult(len(latencies), concurrency, elapsed, latencies, sum(p["inputs"] for p in parts),
                      sum(p["tokens"] for p in parts), processes=n)
