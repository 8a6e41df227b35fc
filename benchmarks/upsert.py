"""Suite `upsert`: documents/s into Flat and HNSW32 collections, against FAISS ``add`` + a bulk SQL insert.

Precomputed vectors: a collection of the run's size (100k; 10k with ``--quick``) is filled in batches
of 1000, then its last documents in batches of 100; each request is timed from send to answer (the
client's JSON encoding happens before the clock starts) and each batch is timed the same way in the
in-process baseline. Texts: batches of 100 texts (embedding included) into fresh collections backed
by the model, against the in-process pipeline (tokenise, forward at batch 100, SQL insert, FAISS add).
"""

from __future__ import annotations

import time

import msgspec
from tqdm import tqdm

from benchmarks.baseline import BaselineCollection
from benchmarks.context import Context, collection_name, throughput, upsert_body
from benchmarks.data import make_texts
from benchmarks.load import check

FACTORIES = ["Flat", "HNSW32"]


def _vector_cases(ctx: Context) -> list[dict]:
    size = ctx.profile.sizes[0]
    cases = []
    for factory in FACTORIES:
        loaded = ctx.collection(factory, size, batch100_docs=ctx.profile.batch100_docs)
        for batch in sorted(loaded.docs):
            docs = loaded.docs[batch]
            service = throughput(docs, loaded.service_seconds[batch])
            baseline = throughput(docs, loaded.baseline_seconds[batch])
            cases.append({
                "input": "vectors (base64)", "index": factory, "batch": batch, "documents": docs, "collection_size": size,
                "service": {"docs_per_s": service, "seconds": sum(loaded.service_seconds[batch]),
                            "requests": len(loaded.service_seconds[batch])},
                "baseline": {"docs_per_s": baseline, "seconds": sum(loaded.baseline_seconds[batch])},
                "ratio": {"throughput": service / baseline},
            })
            tqdm.write(f"upsert {factory} batch {batch}: service {service:,.0f} docs/s, in-process "
                       f"{baseline:,.0f} docs/s ({service / baseline:.0%})")
        if factory == "Flat":
            cases.append(_json_floats_case(ctx, next(c for c in cases if c["index"] == "Flat" and c["batch"] == 1000)))
    return cases


def _json_floats_case(ctx: Context, binary: dict) -> dict:
    """The same Flat batches of 1000 with the vectors as JSON floats instead of base64, into a fresh
    collection (up to 20k documents); the baseline is the base64 case's (the in-process work is the same)."""
    size = min(ctx.profile.sizes[0], 20_000)
    vs = ctx.vectors(size)
    name = collection_name("json-flat", size)
    ctx.create_collection(name, dimension=vs.dimension, metric="cosine", index="Flat")
    seconds = []
    for start in tqdm(range(0, size, 1000), desc="upsert Flat JSON floats", unit="batch", leave=False,
                      dynamic_ncols=True):
        body = upsert_body(vs, start, min(start + 1000, size), binary=False)
        started = time.perf_counter()
        check(ctx.http.post(f"/v1/collections/{name}/documents", content=body,
                            headers={"Content-Type": "application/json"}))
        seconds.append(time.perf_counter() - started)
    ctx.delete_collection(name)
    service = throughput(size, seconds)
    tqdm.write(f"upsert Flat batch 1000, JSON floats: service {service:,.0f} docs/s (base64: "
               f"{binary['service']['docs_per_s']:,.0f})")
    return {"input": "vectors (JSON floats)", "index": "Flat", "batch": 1000, "documents": size,
            "collection_size": size, "service": {"docs_per_s": service, "seconds": sum(seconds), "requests": len(seconds)},
            "baseline": binary["baseline"], "ratio": {"throughput": service / binary["baseline"]["docs_per_s"]}}


def _text_cases(ctx: Context) -> list[dict]:
    profile = ctx.profile
    model = ctx.model()
    batch = 100
    n = profile.text_batches * batch
    warmup = 10
    texts = make_texts(n + warmup, profile.text_tokens, model.tokenize, seed=5)
    cases = []
    for factory in FACTORIES:
        name = collection_name(f"text-{factory}", n)
        ctx.create_collection(name, model=ctx.model_name, index=factory)
        baseline = BaselineCollection(factory, model.dimension, ctx.work_dir / f"{name}.db")
        # warm-up (not timed): a few texts each, so neither side pays for a first call
        check(ctx.http.post(f"/v1/collections/{name}/documents",
                            json={"documents": [{"id": f"w{i}", "text": t} for i, t in enumerate(texts[n:])]}))
        model.encoder.encode(model.tokenize(texts[n:]))
        service_s, baseline_s, tokens = [], [], 0
        for start in tqdm(range(0, n, batch), desc=f"upsert texts {factory}", unit="batch", leave=False,
                          dynamic_ncols=True):
            chunk = texts[start : start + batch]
            body = msgspec.json.encode({"documents": [{"id": str(start + i), "text": t, "metadata": {"i": start + i}}
                                                      for i, t in enumerate(chunk)]})
            started = time.perf_counter()
            answer = check(ctx.http.post(f"/v1/collections/{name}/documents", content=body,
                                         headers={"Content-Type": "application/json"}))
            service_s.append(time.perf_counter() - started)
            tokens += answer["usage"]["prompt_tokens"]
            started = time.perf_counter()
            vectors = model.encoder.encode(model.tokenize(chunk))
            baseline.upsert([str(start + i) for i in range(len(chunk))], vectors,
                            [{"i": start + i} for i in range(len(chunk))], texts=chunk)
            baseline_s.append(time.perf_counter() - started)
        ctx.delete_collection(name)
        baseline.close()
        service, base = throughput(n, service_s), throughput(n, baseline_s)
        cases.append({
            "input": "texts", "index": factory, "batch": batch, "documents": n, "mean_tokens": tokens / n,
            "service": {"docs_per_s": service, "seconds": sum(service_s), "requests": len(service_s)},
            "baseline": {"docs_per_s": base, "seconds": sum(baseline_s)},
            "ratio": {"throughput": service / base},
        })
        tqdm.write(f"upsert texts {factory}: service {service:,.1f} docs/s, in-process {base:,.1f} docs/s "
                   f"({service / base:.0%})")
    return cases


def run(ctx: Context) -> dict:
    cases = _vector_cases(ctx) + _text_cases(ctx)
    return {
        "status": "ok",
        "collection_size": ctx.profile.sizes[0],
        "dimension": ctx.dimension,
        "metric": "cosine",
        "note": "vector batches are timed per request (JSON encoding on the client excluded), vectors as base64 "
                "float32 unless said; texts go into fresh model-backed collections",
        "cases": cases,
    }

