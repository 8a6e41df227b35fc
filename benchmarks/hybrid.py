"""Suite `hybrid`: keyword (BM25) and hybrid search beside dense search, and beside bm25s in-process.

One collection of the first size (100k; 10k with ``--quick``): the search suite's clustered vectors,
each document with a text of 8-24 words drawn from a 20,000-word Zipf vocabulary (so term statistics
look like a language's) and the 10% metadata buckets. Searched one query per request at concurrency 1
and 16 (``--quick``: 16 alone), without and with the 10% filter, in each mode: dense (the query vector), keyword (2-3 words
from the same vocabulary), hybrid (both, RRF). The baseline is bm25s (the same terms, Lucene's BM25,
k1 1.2, b 0.75) in-process, as many queries per call as the service has requests in flight; the
service's keyword answers are compared with its top 10 (overlap@10). The keyword index's build time
from the texts (what the engine does for each collection when it opens) is measured in-process beside
bm25s's, and the memory it holds (tracemalloc).
"""

from __future__ import annotations

import time
import tracemalloc

import bm25s
import msgspec
import numpy as np
from tqdm import tqdm

from benchmarks.context import Context, wire_vector
from benchmarks.search import FILTER, SELECTIVITY, TOP_K, search_load
from index.keywords import B, K1, KeywordIndex, terms

VOCABULARY = 20_000


def texts(n: int, seed: int = 5) -> list[str]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.05
    p /= p.sum()
    lengths = rng.integers(8, 25, n)
    words = rng.choice(VOCABULARY, size=int(lengths.sum()), p=p)
    out, at = [], 0
    for length in lengths:
        out.append(" ".join(f"w{w}" for w in words[at:at + length]))
        at += length
    return out


def keyword_queries(n: int, seed: int = 6) -> list[str]:
    """2-3 words each, from the vocabulary's middle (neither stop-word common nor unseen)."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{w}" for w in rng.integers(20, 3000, rng.integers(2, 4))) for _ in range(n)]


def _baseline(retriever: bm25s.BM25, tokens: list[list[str]], per_call: int, total: int) -> dict:
    latencies, elapsed = [], 0.0
    for start in range(0, total, per_call):
        batch = [tokens[i % len(tokens)] for i in range(start, min(start + per_call, total))]
        began = time.perf_counter()
        retriever.retrieve(batch, k=TOP_K, show_progress=False, n_threads=1)
        took = time.perf_counter() - began
        elapsed += took
        latencies += [took] * len(batch)
    ms = np.array(latencies) * 1000
    return {"qps": total / elapsed, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "queries_per_call": per_call, "requests": total}


def run(ctx: Context) -> dict:
    profile = ctx.profile
    size = profile.sizes[0]
    vs = ctx.vectors(size)
    corpus = texts(size)
    queries = keyword_queries(len(vs.queries))
    name = f"bench-hybrid-{size}"
    cases: list[dict] = []
    result = {"status": "ok", "size": size, "dimension": ctx.dimension, "index": "Flat", "metric": "cosine",
              "data": f"the search suite's clustered vectors, each with a text of 8-24 words from a {VOCABULARY:,}-word "
                      "Zipf vocabulary; keyword queries of 2-3 words",
              "baseline": "bm25s (Lucene's BM25, k1 1.2, b 0.75, the same terms) in-process, `concurrency` queries "
                          "per call", "cases": cases}
    ctx.partial = result

    started = time.perf_counter()
    KeywordIndex().upsert(np.arange(size), corpus)
    result["keyword_index_build_s"] = time.perf_counter() - started
    tracemalloc.start()  # a second build, for the memory it holds (tracing slows it: not timed)
    held = KeywordIndex()
    held.upsert(np.arange(size), corpus)
    result["keyword_index_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del held
    tokens = [terms(t) for t in corpus]
    retriever = bm25s.BM25(method="lucene", k1=K1, b=B)
    started = time.perf_counter()
    retriever.index(tokens, show_progress=False)
    result["bm25s_index_s"] = time.perf_counter() - started
    tqdm.write(f"keyword index of {size:,} texts built in {result['keyword_index_build_s']:.1f} s, holding "
               f"{result['keyword_index_mib']:.0f} MiB (bm25s: {result['bm25s_index_s']:.1f} s)")
    query_tokens = [terms(q) for q in queries]
    truth, _ = retriever.retrieve(query_tokens, k=TOP_K, show_progress=False)

    ctx.create_collection(name, dimension=vs.dimension, metric="cosine", index="Flat")
    try:
        bar = tqdm(total=size, desc=f"upsert texts x{size}", unit="doc", unit_scale=True, leave=False)
        started = time.perf_counter()
        for start in range(0, size, 1000):
            docs = [{"id": str(i), "vector": wire_vector(vs.vectors[i]), "text": corpus[i], "metadata": vs.metadata(i)}
                    for i in range(start, min(start + 1000, size))]
            ctx.http.post(f"/v1/collections/{name}/documents", json={"documents": docs}).raise_for_status()
            bar.update(len(docs))
        bar.close()
        result["upsert_docs_per_s"] = size / (time.perf_counter() - started)
        for mode in ("dense", "keyword", "hybrid"):
            for filtered in (False, True):
                bodies = []
                for q, vector in zip(queries, vs.queries):
                    body: dict = {"top_k": TOP_K, "include": []}
                    if mode != "keyword":
                        body["vector"] = wire_vector(vector)
                    if mode == "keyword":
                        body.update(mode="keyword", query=q)
                    elif mode == "hybrid":
                        body.update(mode="hybrid", keyword=q)
                    if filtered:
                        body["filter"] = FILTER
                    bodies.append(msgspec.json.encode(body))
                for concurrency in profile.search_concurrency[-1:] if profile.quick else profile.search_concurrency:
                    total = profile.search_requests[concurrency]
                    label = f"bucket={FILTER['bucket']} ({SELECTIVITY:.0%})" if filtered else "none"
                    service, found = search_load(ctx.target, f"/v1/collections/{name}/search", bodies,
                                                 lambda answer: [int(hit["id"]) for hit in answer["data"]],
                                                 concurrency, total, f"hybrid {mode} {label} c={concurrency}",
                                                 profile.search_seconds)
                    case = {"mode": mode, "filter": label, "concurrency": concurrency, "service": service}
                    if mode == "keyword" and not filtered:
                        asked = (found >= 0).any(axis=1)
                        case["overlap_at_10_with_bm25s"] = float(np.mean(
                            [len(set(f[f >= 0]) & set(t)) / max(1, min(TOP_K, len(t))) for f, t in
                             zip(found[asked], truth[asked])]))
                        case["baseline"] = _baseline(retriever, query_tokens, concurrency, service["requests"])
                        case["ratio"] = {"qps": service["qps"] / case["baseline"]["qps"]}
                    cases.append(case)
                    tqdm.write(f"hybrid {mode} filter={label} c={concurrency}: {service['qps']:,.0f} QPS "
                               f"p50 {service['p50_ms']:.1f} ms"
                               + (f" | bm25s {case['baseline']['qps']:,.0f} QPS, overlap "
                                  f"{case['overlap_at_10_with_bm25s']:.3f}" if "baseline" in case else ""))
    finally:
        ctx.delete_collection(name)
    return result
