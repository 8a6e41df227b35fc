"""Suite `search`: QPS, latency and recall@10 of POST .../search against the same FAISS index in-process.

For each size (100k and 1M; 10k with ``--quick``) and index (Flat, HNSW32, IVF sized for the data),
with and without a metadata filter that keeps 10% of the documents: the service at each concurrency
(one query vector per request), then the baseline -- a FAISS index of the same type, parameters and
vectors, searched in-process with as many queries per call as the service has requests in flight.
Recall@10 is measured against exact search (restricted to the filter's documents when filtered) for
both. The unfiltered baseline is also swept over efSearch / nprobe for the QPS-versus-recall plot.
"""

from __future__ import annotations

import time
from typing import Callable

import faiss
import msgspec
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure
from faiss.contrib.exhaustive_search import knn_ground_truth
from tqdm import tqdm

from benchmarks.baseline import ivf_factory, selector
from benchmarks.context import Context, wire_vector
from benchmarks.data import VectorSet
from benchmarks.load import LoadClient, percentiles_ms, run_load

TOP_K = 10
FILTER = {"bucket": 3}  # each bucket holds 10% of the documents
SELECTIVITY = 0.1
QPS_TARGET = 0.5  # service / in-process at the highest concurrency
EF_SWEEP = [16, 32, 64, 128, 256, 512]
NPROBE_SWEEP = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def factories(indexes: list[str], size: int) -> list[str]:
    return [ivf_factory(size) if name == "IVF" else name for name in indexes]


def ground_truth(vs: VectorSet, allowed: np.ndarray | None) -> np.ndarray:
    """Exact top-k ids (positions) of every query, among ``allowed`` positions if given."""
    ids = np.arange(len(vs.vectors)) if allowed is None else allowed

    def chunks():
        for start in range(0, len(ids), 65536):
            yield vs.vectors[ids[start : start + 65536]]

    _, found = knn_ground_truth(vs.queries, chunks(), TOP_K, metric_type=faiss.METRIC_INNER_PRODUCT)
    return np.where(found >= 0, ids[np.maximum(found, 0)], -1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Recall@k over the queries that were asked (rows of ``found`` that are not all -1)."""
    asked = (found >= 0).any(axis=1)
    return float(knn_intersection_measure(found[asked], truth[asked]))


def search_load(target, path: str, bodies: list[bytes], ids_of: Callable[[dict], list[int]], concurrency: int,
                total: int, desc: str, seconds: float | None) -> tuple[dict, np.ndarray]:
    """``total`` POSTs of ``bodies`` (one query each, cycled) to ``path`` at ``concurrency``.

    ``ids_of`` reads the hit positions out of an answer; returns the latency/QPS summary and the
    positions found for each query (for recall).
    """
    nq = len(bodies)
    found = np.full((nq, TOP_K), -1, dtype=np.int64)

    async def request(http: LoadClient, i: int) -> tuple[int, int]:
        ids = ids_of(await http.post(path, bodies[i % nq]))
        if i >= 0:
            found[i % nq, : len(ids)] = ids
        return 1, 0

    result = run_load(target, request, total=total, concurrency=concurrency, warmup=min(concurrency, 4),
                      desc=desc, seconds=seconds)
    summary = result.summary()
    summary["qps"] = summary.pop("requests_per_s")
    summary.pop("inputs_per_s")
    return summary, found


def service_search(ctx: Context, name: str, vs: VectorSet, filter_: dict | None, concurrency: int, total: int,
                   desc: str) -> tuple[dict, np.ndarray]:
    """The service's search endpoint, one query vector per request (bodies encoded before the clock)."""
    bodies = [msgspec.json.encode({"vector": wire_vector(q), "top_k": TOP_K, **({"filter": filter_} if filter_ else {})})
              for q in vs.queries]
    return search_load(ctx.target, f"/v1/collections/{name}/search", bodies,
                       lambda answer: [int(hit["id"]) for hit in answer["data"]], concurrency, total, desc,
                       ctx.profile.search_seconds)


def _baseline(loaded, vs: VectorSet, sel, per_call: int, total: int, **params) -> tuple[dict, np.ndarray]:
    """``total`` queries, ``per_call`` per FAISS call; latency of a query = the time of its call."""
    nq = len(vs.queries)
    found = np.full((nq, TOP_K), -1, dtype=np.int64)
    loaded.baseline.search(vs.queries[:per_call], TOP_K, sel, **params)  # warm-up
    latencies = []
    elapsed = 0.0
    for start in range(0, total, per_call):
        rows = np.arange(start, min(start + per_call, total)) % nq
        began = time.perf_counter()
        _, ids = loaded.baseline.search(vs.queries[rows], TOP_K, sel, **params)
        took = time.perf_counter() - began
        elapsed += took
        latencies += [took] * len(rows)
        found[rows] = ids
    summary = percentiles_ms(np.array(latencies))
    summary.update(qps=total / elapsed, queries_per_call=per_call, requests=total)
    return summary, found


def _sweep(loaded, vs: VectorSet, truth: np.ndarray) -> list[dict]:
    """Baseline QPS and recall over efSearch / nprobe (unfiltered, 16 queries per call)."""
    if loaded.factory.startswith("HNSW"):
        grid = [("efSearch", v, {"ef_search": v}) for v in EF_SWEEP]
    elif loaded.factory.startswith("IVF"):
        nlist = loaded.baseline.params["nlist"]
        grid = [("nprobe", v, {"nprobe": v}) for v in NPROBE_SWEEP if v <= nlist]
    else:
        grid = [("exact", 1, {})]
    points = []
    for param, value, kwargs in grid:
        summary, found = _baseline(loaded, vs, None, 16, len(vs.queries), **kwargs)
        points.append({"param": param, "value": value, "qps": summary["qps"], "recall_at_10": recall(found, truth)})
    return points


def run(ctx: Context) -> dict:
    profile = ctx.profile
    cases: list[dict] = []
    curves: list[dict] = []
    result = {
        "status": "ok",
        "sizes": profile.sizes,
        "dimension": ctx.dimension,
        "metric": "cosine",
        "data": "clustered synthetic vectors (3000 overlapping Gaussian clusters in a 64-d subspace, lifted and normalised)",
        "baseline": "same FAISS index type and parameters, in-process, `concurrency` queries per call",
        "cases": cases,
        "curves": curves,
    }
    ctx.partial = result  # filled in as the cases are measured
    for size in profile.sizes:
        vs = ctx.vectors(size)
        allowed = np.flatnonzero(vs.buckets == FILTER["bucket"])
        started = time.perf_counter()
        truths = {None: ground_truth(vs, None), "filter": ground_truth(vs, allowed)}
        tqdm.write(f"exact ground truth for {size} vectors in {time.perf_counter() - started:.1f} s")
        sel = selector(allowed)
        for factory in factories(profile.indexes, size):
            loaded = ctx.collection(factory, size)
            curves.append({"size": size, "index": factory, "points": _sweep(loaded, vs, truths[None])})
            for filtered in (False, True):
                truth = truths["filter" if filtered else None]
                label = f"bucket={FILTER['bucket']} ({SELECTIVITY:.0%})" if filtered else "none"
                for concurrency in profile.search_concurrency:
                    total = profile.search_requests[concurrency]
                    desc = f"search {factory} x{size} {'filtered ' if filtered else ''}c={concurrency}"
                    service, found_s = service_search(ctx, loaded.name, vs, FILTER if filtered else None,
                                                      concurrency, total, desc)
                    service["recall_at_10"] = recall(found_s, truth)
                    baseline, found_b = _baseline(loaded, vs, sel if filtered else None, concurrency,
                                                  service["requests"])
                    baseline["recall_at_10"] = recall(found_b, truth)
                    case = {
                        "size": size, "index": factory, "filter": label, "concurrency": concurrency, "top_k": TOP_K,
                        "service": service, "baseline": baseline,
                        "ratio": {"qps": service["qps"] / baseline["qps"],
                                  "latency_p50": service["p50_ms"] / baseline["p50_ms"]},
                    }
                    if filtered:
                        case["selectivity"] = SELECTIVITY
                    cases.append(case)
                    tqdm.write(f"search {factory} x{size} filter={label} c={concurrency}: service "
                               f"{service['qps']:,.0f} QPS p50 {service['p50_ms']:.1f} ms recall {service['recall_at_10']:.3f}"
                               f" | in-process {baseline['qps']:,.0f} QPS recall {baseline['recall_at_10']:.3f}")
            ctx.drop_collection(loaded)  # frees memory before the next (bigger) size
    result["targets"] = targets(cases, max(profile.search_concurrency))
    return result


def targets(cases: list[dict], concurrency: int) -> list[dict]:
    """Service QPS >= QPS_TARGET x in-process at ``concurrency`` (that many queries per FAISS call), per case."""
    return [{"name": f"search {c['index']} x{c['size']:,} filter {c['filter']} c={concurrency} / in-process",
             "value": c["ratio"]["qps"], "target": f">= {QPS_TARGET}", "met": c["ratio"]["qps"] >= QPS_TARGET}
            for c in cases if c["concurrency"] == concurrency]
