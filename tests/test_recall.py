"""Recall of an HNSW32 collection through the whole service: 20,000 random vectors, exact numpy truth."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration

N, D, NQ, K = 20_000, 64, 50, 10


def exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.argsort(-(queries @ normed.T), axis=1, kind="stable")[:, :k]


def recall(found: list[list[dict]], truth: np.ndarray, ids: np.ndarray) -> float:
    hits = sum(len({int(h["id"]) for h in row} & set(ids[t].tolist())) for row, t in zip(found, truth))
    return hits / truth.size


async def test_hnsw32_collection_recall_with_and_without_a_filter(client):
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((N, D)).astype(np.float32)
    queries = rng.standard_normal((NQ, D)).astype(np.float32)
    assert (await client.post("/v1/collections", json={"name": "r", "dimension": D, "index": "HNSW32"})).status_code == 201
    for start in range(0, N, 1000):
        docs = [{"id": str(i), "vector": vectors[i].tolist(), "metadata": {"bucket": i % 10}}
                for i in range(start, start + 1000)]
        assert (await client.post("/v1/collections/r/documents", json={"documents": docs})).status_code == 200

    body = {"vectors": queries.tolist(), "top_k": K, "include": []}
    found = (await client.post("/v1/collections/r/search", json=body)).json()["data"]
    everything = np.arange(N)
    assert recall(found, exact(vectors, queries, K), everything) >= 0.95

    kept = everything[everything % 10 == 3]  # a filter keeping 10% of the documents
    found = (await client.post("/v1/collections/r/search", json=body | {"filter": {"bucket": 3}})).json()["data"]
    assert all(int(h["id"]) % 10 == 3 for row in found for h in row)
    assert recall(found, exact(vectors[kept], queries, K), kept) >= 0.95
