"""Keyword (BM25) and hybrid search over HTTP, on SQLite and PostgreSQL: every mode, both fusion methods,
filters, explain, updates and deletes seen by the next search, statistics per collection, bad input."""

from __future__ import annotations

import contextlib

import bm25s
import msgspec
import numpy as np
import pytest

from index.keywords import B, K1, terms
from tests.conftest import app_client, fresh_database
from tests.test_collections_api import make, rng_vectors, search, upsert
from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.integration

# words the tiny model's tokenizer knows (dense branch), plus codes only keyword search can tell apart
TEXTS = {
    "a": "the quick brown fox jumps over the lazy dog xk4821",
    "b": "a red apple and a green banana",
    "c": "the fast vector search server zq1077",
    "d": "hello world from a small server",
    "e": "the lazy cat sat on the mat xk4821 xk4821",
}
META = {"a": {"n": 1, "g": "x"}, "b": {"n": 2, "g": "y"}, "c": {"n": 3, "g": "x"}, "d": {"n": 4, "g": "y"},
        "e": {"n": 5, "g": "x"}}


@pytest.fixture
def client(db_client):
    return db_client


async def texts_collection(client, name="kw", **body):
    await make(client, name, model="tiny", **body)
    await upsert(client, name, [{"id": i, "text": t, "metadata": META[i]} for i, t in TEXTS.items()])


def bm25(texts: dict[str, str], query: str) -> dict[str, float]:
    """bm25s's Lucene scores of ``query`` over ``texts`` (the same tokens), by id."""
    retriever = bm25s.BM25(method="lucene", k1=K1, b=B)
    retriever.index([terms(t) for t in texts.values()], show_progress=False)
    scores = retriever.get_scores(list(dict.fromkeys(terms(query))))
    return {i: float(s) for i, s in zip(texts, scores) if s > 0}


async def test_keyword_mode_scores_bm25_per_collection(client):
    await texts_collection(client)
    found = await search(client, "kw", query="XK4821 lazy", mode="keyword", top_k=5)
    expected = bm25(TEXTS, "XK4821 lazy")
    assert [h["id"] for h in found["data"]] == sorted(expected, key=lambda i: -expected[i])
    for hit in found["data"]:
        assert hit["score"] == pytest.approx(expected[hit["id"]], rel=1e-5)
        assert hit["text"] == TEXTS[hit["id"]] and "explain" not in hit
    assert found["usage"]["prompt_tokens"] == 0  # nothing embedded
    assert (await search(client, "kw", query="nothingmatches", mode="keyword"))["data"] == []
    batch = await search(client, "kw", queries=["zq1077", "banana"], mode="keyword", top_k=1)
    assert [[h["id"] for h in hits] for hits in batch["data"]] == [["c"], ["b"]]


async def test_hybrid_fuses_both_branches_and_explains(client):
    await texts_collection(client)
    found = await search(client, "kw", query="the lazy cat sat on the mat", mode="hybrid", top_k=5, explain=True)
    dense = await search(client, "kw", query="the lazy cat sat on the mat", top_k=5, explain=True)
    keyword = await search(client, "kw", query="the lazy cat sat on the mat", mode="keyword", top_k=5, explain=True)
    dense_rank = {h["id"]: h["explain"]["dense"]["rank"] for h in dense["data"]}
    keyword_rank = {h["id"]: h["explain"]["keyword"]["rank"] for h in keyword["data"]}
    assert all(h["explain"]["keyword"] is None for h in dense["data"])
    for hit in found["data"]:
        explained = hit["explain"]
        expected = sum(1 / (60 + ranks[hit["id"]]) for ranks in (dense_rank, keyword_rank) if hit["id"] in ranks)
        assert hit["score"] == pytest.approx(expected, rel=1e-6)
        if explained["dense"]:
            assert explained["dense"]["rank"] == dense_rank[hit["id"]]
        if explained["keyword"]:
            assert explained["keyword"]["rank"] == keyword_rank[hit["id"]]
            assert explained["keyword"]["score"] == pytest.approx(bm25(TEXTS, "the lazy cat sat on the mat")[hit["id"]],
                                                                  rel=1e-5)
    assert found["data"][0]["id"] == "e"  # first in both branches
    assert found["usage"]["prompt_tokens"] > 0
    # a branch weighted 0 leaves the other's order
    only_keyword = await search(client, "kw", query="xk4821", mode="hybrid", top_k=5,
                                fusion={"method": "rrf", "weights": {"dense": 0, "keyword": 1}})
    assert [h["id"] for h in only_keyword["data"]][:2] == ["e", "a"]


async def test_weighted_fusion_of_normalised_scores(client):
    await texts_collection(client, metric="l2")
    query = {"query": "a red apple and a green banana", "keyword": "xk4821 banana", "mode": "hybrid", "top_k": 5,
             "explain": True}
    for alpha in (0.0, 0.3, 1.0):
        found = await search(client, "kw", **query, fusion={"method": "weighted", "alpha": alpha})
        hits = found["data"]
        dense = {h["id"]: h["explain"]["dense"]["score"] for h in hits if h["explain"]["dense"]}
        keyword = {h["id"]: h["explain"]["keyword"]["score"] for h in hits if h["explain"]["keyword"]}
        every_dense = await search(client, "kw", query=query["query"], top_k=100)
        every_keyword = await search(client, "kw", query=query["keyword"], mode="keyword", top_k=100)
        d = {h["id"]: h["score"] for h in every_dense["data"]}
        k = {h["id"]: h["score"] for h in every_keyword["data"]}
        assert dense == {i: pytest.approx(d[i], rel=1e-5) for i in dense}
        for hit in hits:  # l2: the nearest normalises to 1
            d_norm = (max(d.values()) - d[hit["id"]]) / (max(d.values()) - min(d.values())) if hit["id"] in d else 0
            k_norm = (k[hit["id"]] - min(k.values())) / (max(k.values()) - min(k.values())) if hit["id"] in k else 0
            assert hit["score"] == pytest.approx(alpha * d_norm + (1 - alpha) * k_norm, abs=1e-6)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        assert set(keyword) <= set(k)
    top_dense = await search(client, "kw", **query, fusion={"method": "weighted", "alpha": 1.0})
    assert top_dense["data"][0]["id"] == "b"


async def test_filters_apply_to_both_branches_with_exact_top_k(client):
    await make(client, "many", dimension=8)
    rng = np.random.default_rng(7)
    words = ["alpha", "beta", "gamma", "delta", "rare42"]
    texts = {str(i): " ".join(rng.choice(words[:4], size=6)) + (" rare42" if i % 10 == 0 else "") for i in range(300)}
    vectors = rng_vectors(300, 8, seed=3)
    await upsert(client, "many", [{"id": i, "text": t, "vector": vectors[int(i)].tolist(), "metadata": {"m": int(i) % 3}}
                                  for i, t in texts.items()])
    allowed = {i: t for i, t in texts.items() if int(i) % 3 == 1}
    found = await search(client, "many", vector=vectors[0].tolist(), keyword="rare42 beta", mode="keyword", top_k=10,
                         filter={"m": 1})
    expected = bm25(texts, "rare42 beta")  # statistics of the whole collection; the filter only selects
    best = sorted((i for i in allowed if i in expected), key=lambda i: (-expected[i], int(i)))[:10]
    assert [h["id"] for h in found["data"]] == best
    hybrid = await search(client, "many", vector=vectors[0].tolist(), keyword="rare42", mode="hybrid", top_k=20,
                          filter={"m": 1}, explain=True)
    assert hybrid["data"] and all(int(h["id"]) % 3 == 1 for h in hybrid["data"])
    assert any(h["explain"]["keyword"] for h in hybrid["data"]) and any(h["explain"]["dense"] for h in hybrid["data"])


async def test_writes_are_seen_by_the_next_keyword_search(client):
    await texts_collection(client)
    await upsert(client, "kw", [{"id": "b", "text": "now it says zq1077 twice zq1077"}])
    found = await search(client, "kw", query="zq1077", mode="keyword")
    assert [h["id"] for h in found["data"]] == ["b", "c"]
    assert (await search(client, "kw", query="banana", mode="keyword"))["data"] == []
    assert (await client.delete("/v1/collections/kw/documents/c")).status_code == 200
    assert [h["id"] for h in (await search(client, "kw", query="zq1077", mode="keyword"))["data"]] == ["b"]
    await client.post("/v1/collections/kw/documents/delete", json={"filter": {}})
    assert (await search(client, "kw", query="zq1077", mode="keyword"))["data"] == []


async def test_statistics_stay_per_collection_and_tenant(client):
    await texts_collection(client, "mine")
    before = (await search(client, "mine", query="xk4821", mode="keyword"))["data"]
    other = {"Authorization": f"Bearer {client.app.state.services.keys.create('other')}"}
    assert (await client.post("/v1/collections", json={"name": "mine", "model": "tiny"}, headers=other)).status_code == 201
    flood = [{"id": str(i), "text": "xk4821 xk4821 everywhere"} for i in range(200)]
    assert (await client.post("/v1/collections/mine/documents", json={"documents": flood}, headers=other)).status_code == 200
    after = (await search(client, "mine", query="xk4821", mode="keyword"))["data"]
    assert after == before  # the other tenant's documents change neither idf nor the average length
    theirs = await client.post("/v1/collections/mine/search", json={"query": "xk4821", "mode": "keyword", "top_k": 1},
                               headers=other)
    assert theirs.json()["data"][0]["score"] < before[0]["score"]


async def test_vector_collections_with_text_and_the_errors(client):
    await make(client, "vec", dimension=2)
    await upsert(client, "vec", [{"id": "t", "vector": [1, 0], "text": "code xk4821"}, {"id": "v", "vector": [0, 1]}])
    assert [h["id"] for h in (await search(client, "vec", query="xk4821", mode="keyword"))["data"]] == ["t"]
    hybrid = await search(client, "vec", vector=[0, 1], keyword="xk4821", mode="hybrid", explain=True)
    assert {h["id"] for h in hybrid["data"]} == {"t", "v"}
    path = "/v1/collections/vec/search"
    cases = [
        ({"vector": [0, 1], "mode": "keyword"}, "keyword"),  # no keyword text
        ({"query": "x", "mode": "hybrid"}, "query"),  # hybrid needs vectors: no model to embed with
        ({"vector": [0, 1], "keyword": "x"}, "keyword"),  # keyword in dense mode
        ({"vector": [0, 1], "fusion": {"method": "rrf"}}, "fusion"),  # fusion outside hybrid
        ({"vectors": [[0, 1]], "keyword": "x", "mode": "hybrid"}, "keyword"),
        ({"vector": [0, 1], "keyword": " ", "mode": "keyword"}, "keyword"),
    ]
    bad_fusions = [{"method": "rrf", "k": 0}, {"k": 10_001}, {"method": "rrf", "weights": {"dense": -1}},
                   {"method": "rrf", "weights": {"dense": 0, "keyword": 0}}, {"method": "weighted", "alpha": 1.5},
                   {"method": "rrf", "candidates": 5}, {"method": "rrf", "candidates": 1001}]
    cases += [({"vector": [0, 1], "keyword": "x", "mode": "hybrid", "top_k": 10, "fusion": f}, "fusion")
              for f in bad_fusions]
    for body, param in cases:
        assert_error(await client.post(path, json=body), 400, param=param)
    for fusion in [{"method": "borda"}, {"method": "rrf", "alpha": 0.5}, {"alpha": 0.5},
                   {"method": "weighted", "k": 60}, {"method": "weighted", "weights": {"dense": 1}},
                   {"k": 60, "bogus": 1}]:
        assert_error(await client.post(path, json={"vector": [0, 1], "keyword": "x", "mode": "hybrid",
                                                   "fusion": fusion}), 400, param="fusion")
    assert_error(await client.post(path, json={"vector": [0, 1], "mode": "fuzzy"}), 400)
    await make(client, "bare", dimension=2)
    await upsert(client, "bare", [{"id": "v", "vector": [0, 1]}])
    assert_error(await client.post("/v1/collections/bare/search", json={"query": "x", "mode": "keyword"}), 400,
                 code="no_text")
    await make(client, "empty", dimension=2)
    assert (await search(client, "empty", query="x", mode="keyword"))["data"] == []


async def test_fusion_method_defaults_to_rrf_and_a_field_of_the_other_method_is_refused(client):
    await texts_collection(client)
    query = {"query": "the lazy cat sat on the mat", "mode": "hybrid", "top_k": 5, "explain": True}
    for fusion, k in [({"k": 10}, 10), ({}, 60), ({"k": 10_000}, 10_000), ({"k": 1, "candidates": 50}, 1)]:
        rrf = await search(client, "kw", **query, fusion={"method": "rrf", **fusion})
        assert await search(client, "kw", **query, fusion=fusion) == rrf  # method left out: RRF
        for hit in rrf["data"]:
            ranks = [b["rank"] for b in hit["explain"].values() if b]
            assert hit["score"] == pytest.approx(sum(1 / (k + rank) for rank in ranks), rel=1e-6)
    error = assert_error(await client.post("/v1/collections/kw/search", json={**query, "fusion": {"alpha": 0.5}}),
                         400, param="fusion")
    assert "alpha" in error["message"] and "weighted" in error["message"]
    error = assert_error(await client.post("/v1/collections/kw/search",
                                           json={**query, "fusion": {"method": "weighted", "k": 5}}), 400,
                         param="fusion")
    assert "fusion.k" in error["message"] and "rrf" in error["message"]
    error = assert_error(await client.post("/v1/collections/kw/search", json={**query, "fusion": {"k": 10_001}}),
                         400, param="fusion")
    assert "10000" in error["message"]


async def test_the_openapi_schema_documents_the_new_fields(client):
    schema = (await client.get("/docs/openapi.json")).json()
    schemas = schema["components"]["schemas"]
    search = schemas["SearchRequest"]["properties"]
    assert search["mode"]["enum"] == ["dense", "keyword", "hybrid"] or "dense" in str(search["mode"])
    assert {"keyword", "fusion", "explain"} <= set(search)
    assert "FusionParams" in str(search["fusion"])
    fusion = schemas["FusionParams"]
    assert {"method", "k", "weights", "alpha", "candidates"} <= set(fusion["properties"])
    method = fusion["properties"]["method"]
    assert method["enum"] == ["rrf", "weighted"] and method["default"] == "rrf"  # RRF unless told otherwise
    assert "explain" in schemas["Hit"]["properties"] and {"dense", "keyword"} <= set(schemas["Explain"]["properties"])
    for name in ("FusionParams", "FusionWeights"):
        assert schemas[name].get("additionalProperties") is False, name


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_the_keyword_index_comes_back_from_sql_on_restart(request, settings, database):
    """Not snapshotted: a restarted server (or one after kill -9, tests/test_crash.py) builds it from SQL."""
    with contextlib.ExitStack() as stack:
        if database == "postgresql":
            url = stack.enter_context(fresh_database(request.getfixturevalue("postgres_url")))
            settings = msgspec.structs.replace(settings, database_url=url)
        async with app_client(settings) as first:
            await texts_collection(first)
            await upsert(first, "kw", [{"id": "b", "text": "replaced by zq1077"}])
            assert (await first.delete("/v1/collections/kw/documents/d")).status_code == 200
            before = await search(first, "kw", query="zq1077 xk4821 server", mode="keyword")
        async with app_client(settings) as second:
            after = await search(second, "kw", query="zq1077 xk4821 server", mode="keyword")
            assert after == before and {h["id"] for h in after["data"]} == {"a", "b", "c", "e"}
