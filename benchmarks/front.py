"""What the request path itself costs: server CPU time per request, with a tiny model and a tiny collection.

A server of its own (a tiny random Gemma 3, a 1,000 x 64 Flat collection) answers, at concurrency 64,
``GET /v1/models`` (the floor: the cheapest authenticated request), ``POST /v1/embeddings`` with one
input (base64), and ``POST /v1/collections/{name}/search`` with one vector (top 10). The server's
process CPU time (user + system, all its threads, from /proc) over the requests answered is the cost
of a request; for search, the in-process FAISS search of the same query on the same index is taken off.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import faiss
import httpx
import msgspec
import numpy as np

from benchmarks.context import Context
from benchmarks.load import LoadClient, check
from benchmarks.model import InProcessModel
from benchmarks.server import ServerProcess
from benchmarks.tiny_model import save_tiny_gemma

CONCURRENCY = 64
DIMENSION = 64
DOCUMENTS = 1000
TEXT = "hello world"
TARGETS_MS = {"models": 0.2, "embeddings": 0.3, "search": 0.4}  # search: beyond FAISS


def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(server: ServerProcess, method: str, path: str, body: bytes | None, total: int) -> dict:
    pid = server.process.proc.pid
    async with LoadClient(server, CONCURRENCY) as http:
        async def one() -> None:
            if method == "GET":
                async with http.session.get(http.url + path) as response:
                    await response.read()
                    assert response.status == 200, response.status
            else:
                await http.post(path, body)

        for _ in range(200):  # warm-up: connections open, caches full
            await one()
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        cpu, began = server_cpu_s(pid), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed, cpu = time.perf_counter() - began, server_cpu_s(pid) - cpu
    return {"requests": total, "requests_per_s": total / elapsed, "server_cpu_ms_per_request": cpu / total * 1000}


def _faiss_cpu_ms(vectors: np.ndarray, query: np.ndarray) -> float:
    """CPU time of the index's own work for one query: IndexFlatIP over the same normalised vectors."""
    index = faiss.IndexFlatIP(DIMENSION)
    index.add(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    q = (query / np.linalg.norm(query))[None].astype(np.float32)
    index.search(q, 10)
    began, n = time.process_time(), 2000
    for _ in range(n):
        index.search(q, 10)
    return (time.process_time() - began) / n * 1000


def _model_cpu_ms(models_file: Path, models_dir: Path, text: str) -> float:
    """CPU time of the tiny model's own work for one input, forwarded in batches of CONCURRENCY of it (what
    the batcher makes of CONCURRENCY one-input requests at best): tokenising and the forward pass."""
    model = InProcessModel("tiny", str(models_file), models_dir, "cpu", "float32")
    texts = [text] * CONCURRENCY
    model.encoder.encode(model.tokenize(texts))
    began, n = time.process_time(), 50
    for _ in range(n):
        model.encoder.encode(model.tokenize(texts))
    return (time.process_time() - began) / (n * CONCURRENCY) * 1000


def run(ctx: Context) -> dict:
    if not ctx.target.started_here:
        return {"status": "skipped", "reason": "needs a server this run starts (its process CPU is read from /proc)"}
    work = ctx.work_dir / "front"
    model = save_tiny_gemma(work / "tiny")
    models_file = work / "models.json"
    models_file.write_text(json.dumps({"models": {"tiny": {"source": str(model), "max_tokens": 64}}}))
    server = ServerProcess(work / "data", ctx.out_dir / "front-server.log",
                           {"EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
                            "EMBEDSEARCH_LOG_LEVEL": "WARNING"})
    total = ctx.profile.front_requests
    try:
        server.start()
        server.wait_ready(120)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((DOCUMENTS, DIMENSION)).astype(np.float32)
        query = rng.standard_normal(DIMENSION).astype(np.float32)
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
            check(http.post("/v1/collections", json={"name": "front", "dimension": DIMENSION}))
            check(http.post("/v1/collections/front/documents",
                            json={"documents": [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(vectors)]}))
        routes = {
            "models": ("GET", "/v1/models", None),
            "embeddings": ("POST", "/v1/embeddings",
                           msgspec.json.encode({"model": "tiny", "input": TEXT, "encoding_format": "base64"})),
            "search": ("POST", "/v1/collections/front/search", msgspec.json.encode({"vector": query.tolist(), "top_k": 10})),
        }
        cases = {name: asyncio.run(_load(server, *route, total)) for name, route in routes.items()}
    finally:
        server.stop()
    faiss_ms = _faiss_cpu_ms(vectors, query)
    model_ms = _model_cpu_ms(models_file, work / "models", TEXT)
    cases["embeddings"]["model_cpu_ms"] = model_ms
    cases["embeddings"]["beyond_model_ms"] = cases["embeddings"]["server_cpu_ms_per_request"] - model_ms
    cases["search"]["faiss_cpu_ms"] = faiss_ms
    cases["search"]["beyond_faiss_ms"] = cases["search"]["server_cpu_ms_per_request"] - faiss_ms
    targets = []
    for name, target in TARGETS_MS.items():
        value = cases[name]["beyond_faiss_ms" if name == "search" else "server_cpu_ms_per_request"]
        targets.append({"name": f"server CPU per request, {name}" + (" beyond FAISS" if name == "search" else ""),
                        "value": value, "target": f"<= {target} ms", "met": value <= target})
    return {"status": "ok", "concurrency": CONCURRENCY, "collection": f"{DOCUMENTS} x {DIMENSION} Flat",
            "cases": [{"route": name, **case} for name, case in cases.items()], "targets": targets}
