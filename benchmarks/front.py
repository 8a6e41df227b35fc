"""What the request path itself costs: server CPU time per request, with a tiny model and a tiny collection.

A server of its own (:class:`TinyServer`: a tiny random Gemma 3, a 1,000 x 64 Flat collection) answers,
at concurrency 64, ``GET /v1/models`` (the floor: the cheapest authenticated request), ``POST
/v1/embeddings`` with one input (base64), and ``POST /v1/collections/{name}/search`` with one vector
(base64, top 10), sent by the load generator from processes of its own. The CPU time of the server's
process tree (user + system of the serve process and all its descendants, from /proc) over the
requests answered is the cost of a request; the model's own CPU for one input and FAISS's for the same
query on the same index, both measured in-process, are set beside it. The `workers` suite runs the
same server with several HTTP worker processes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import httpx
import msgspec
import numpy as np

from benchmarks.context import Context, wire_vector
from benchmarks.load import check, embedding_counts, run_process_load
from benchmarks.model import InProcessModel
from benchmarks.server import ProcessTreeCPU, ServerProcess
from benchmarks.tiny_model import save_tiny_gemma

CONCURRENCY = 64
DIMENSION = 64
DOCUMENTS = 1000
COLLECTION = f"{DOCUMENTS:,} x {DIMENSION} Flat"
TEXT = "hello world"
WARMUP = 200  # unrecorded requests per case: connections open, caches full
TARGETS_MS = {"models": 0.2, "embeddings": 0.3, "search": 0.4}  # search: beyond FAISS


class TinyServer:
    """A server of its own, open as a ``with`` block: a tiny random Gemma 3 served as ``tiny`` and a
    DOCUMENTS x DIMENSION Flat collection ``tiny`` of random vectors, with ``settings`` (EMBEDSEARCH_*)
    on top. :meth:`measure` loads one of :attr:`routes` and reads the server's CPU meanwhile."""

    def __init__(self, work: Path, log_path: Path, settings: dict[str, str] | None = None) -> None:
        self.work = work
        self.models_file = work / "models.json"
        self.server = ServerProcess(work / "data", log_path,
                                    {"EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(self.models_file),
                                     "EMBEDSEARCH_LOG_LEVEL": "WARNING", **(settings or {})})
        rng = np.random.default_rng(0)
        self.vectors = rng.standard_normal((DOCUMENTS, DIMENSION)).astype(np.float32)
        self.query = rng.standard_normal(DIMENSION).astype(np.float32)
        # route -> (path, POST body, or None for a GET)
        self.routes: dict[str, tuple[str, bytes | None]] = {
            "models": ("/v1/models", None),
            "embeddings": ("/v1/embeddings",
                           msgspec.json.encode({"model": "tiny", "input": TEXT, "encoding_format": "base64"})),
            "search": ("/v1/collections/tiny/search",
                       msgspec.json.encode({"vector": wire_vector(self.query), "top_k": 10})),
        }

    def __enter__(self) -> "TinyServer":
        model = save_tiny_gemma(self.work / "tiny")
        self.models_file.write_text(json.dumps({"models": {"tiny": {"source": str(model), "max_tokens": 64}}}))
        self.server.start()
        try:
            self.server.wait_ready(120)
            with httpx.Client(base_url=self.server.url, headers=self.server.headers, timeout=120) as http:
                check(http.post("/v1/collections", json={"name": "tiny", "dimension": DIMENSION}))
                docs = [{"id": str(i), "vector": wire_vector(v)} for i, v in enumerate(self.vectors)]
                check(http.post("/v1/collections/tiny/documents", json={"documents": docs}))
        except BaseException:
            self.server.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def measure(self, route: str, total: int, processes: int | None = None, desc: str = "") -> dict:
        """``total`` requests of ``route`` at CONCURRENCY (after WARMUP) from up to ``processes`` client
        processes: the load's summary, the server's CPU ms per request and the server processes seen."""
        path, body = self.routes[route]
        cpu = ProcessTreeCPU(self.server.pid)
        result = run_process_load(self.server, path, None if body is None else [body], total=total,
                                  concurrency=CONCURRENCY, processes=processes, warmup=WARMUP, meter=cpu,
                                  counts=embedding_counts if route == "embeddings" else None, desc=desc or route)
        summary = result.summary()
        summary.pop("inputs_per_s")  # one input per request (or none): requests_per_s says it
        return {**summary, "server_cpu_ms_per_request": cpu.seconds / result.requests * 1000,
                "server_processes": cpu.processes}


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
    with TinyServer(work, ctx.out_dir / "front-server.log") as tiny:
        cases = {route: tiny.measure(route, ctx.profile.front_requests, ctx.profile.client_processes)
                 for route in tiny.routes}
    faiss_ms = _faiss_cpu_ms(tiny.vectors, tiny.query)
    model_ms = _model_cpu_ms(tiny.models_file, work / "models", TEXT)
    cases["embeddings"]["model_cpu_ms"] = model_ms
    cases["embeddings"]["beyond_model_ms"] = cases["embeddings"]["server_cpu_ms_per_request"] - model_ms
    cases["search"]["faiss_cpu_ms"] = faiss_ms
    cases["search"]["beyond_faiss_ms"] = cases["search"]["server_cpu_ms_per_request"] - faiss_ms
    targets = []
    for name, target in TARGETS_MS.items():
        value = cases[name]["beyond_faiss_ms" if name == "search" else "server_cpu_ms_per_request"]
        targets.append({"name": f"server CPU per request, {name}" + (" beyond FAISS" if name == "search" else ""),
                        "value": value, "target": f"<= {target} ms", "met": value <= target})
    return {"status": "ok", "concurrency": CONCURRENCY, "collection": COLLECTION,
            "cases": [{"route": name, **case} for name, case in cases.items()], "targets": targets}
