"""Collections, documents and search over HTTP, on a real SQLite file or PostgreSQL and real FAISS indexes, and
on SQLite with the Milvus backend (milvus-lite)."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.integration


@pytest.fixture
def client(backend_client):
    """Every test here runs on SQLite and on PostgreSQL, and on SQLite with the Milvus backend."""
    return backend_client


def rng_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


async def make(client, name="docs", **body):
    response = await client.post("/v1/collections", json={"name": name, **body})
    assert response.status_code == 201, response.text
    return response.json()


async def upsert(client, name, docs):
    response = await client.post(f"/v1/collections/{name}/documents", json={"documents": docs})
    assert response.status_code == 200, response.text
    return response.json()


async def search(client, name, **body):
    response = await client.post(f"/v1/collections/{name}/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int, metric: str) -> list[int]:
    if metric == "cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        query = query / np.linalg.norm(query)
    if metric == "l2":
        return list(np.argsort(np.linalg.norm(vectors - query, axis=1), kind="stable")[:k])
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])


async def test_collection_lifecycle(client):
    created = await make(client, "books", dimension=8, metric="dot", index="HNSW32")
    assert created["name"] == "books" and created["dimension"] == 8 and created["metric"] == "dot"
    assert created["index"] == "HNSW32" and created["count"] == 0 and created["model"] is None
    assert isinstance(created["created_at"], int)
    await make(client, "texts", model="tiny")
    listed = (await client.get("/v1/collections")).json()
    assert listed["object"] == "list"
    assert [c["name"] for c in listed["data"]] == ["books", "texts"]
    texts = (await client.get("/v1/collections/texts")).json()
    assert texts["dimension"] == 64 and texts["model"] == "tiny" and texts["metric"] == "cosine"
    assert texts["index"] == "Flat"
    deleted = await client.delete("/v1/collections/books")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert_error(await client.get("/v1/collections/books"), 404, code="collection_not_found")
    assert [c["name"] for c in (await client.get("/v1/collections")).json()["data"]] == ["texts"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"name": "bad name", "dimension": 4}, 400, "name"),
        ({"name": "", "dimension": 4}, 400, "name"),
        ({"name": "x" * 65, "dimension": 4}, 400, "name"),
        ({"name": "novec"}, 400, "dimension"),
        ({"name": "zero", "dimension": 0}, 400, "dimension"),
        ({"name": "big", "model": "tiny", "dimension": 65}, 400, "dimension"),
        ({"name": "m", "model": "nope"}, 404, "model"),
        ({"name": "metric", "dimension": 4, "metric": "hamming"}, 400, "metric"),
        ({"name": "idx", "dimension": 4, "index": "NotAnIndex"}, 400, "index"),
        ({"name": "pq", "dimension": 10, "index": "IVF16,PQ16"}, 400, "index"),
        ({"dimension": 4}, 400, "name"),
    ],
)
async def test_bad_collections_are_refused(client, body, status, param):
    assert_error(await client.post("/v1/collections", json=body), status, param=param)


async def test_index_types_without_a_milvus_equivalent_are_400_on_milvus(client):
    """FAISS strings Milvus has no index for are refused at creation on the Milvus backend, and nothing is left."""
    milvus = client.app.state.services.engine.snapshots is None
    refused = [("hsq", "HNSW32,SQ8"), ("pq", "PQ4"), ("opq", "OPQ4,IVF8,PQ4"), ("pca", "PCA8,Flat"),
               ("opq4", "OPQ4,IVF4,PQ4"), ("sq4", "IVF4,SQ4"), ("rflat", "Flat,RFlat")]
    for name, index in refused:
        response = await client.post("/v1/collections", json={"name": name, "dimension": 8, "index": index})
        if milvus:
            assert_error(response, 400, param="index")
            assert "no Milvus equivalent" in response.json()["error"]["message"]
        else:
            assert response.status_code == 201, response.text
    for name, index in [("ivf", "IVF8,Flat"), ("sq8", "IVF8,SQ8"), ("ivfpq", "IVF8,PQ4x8")]:
        await make(client, name, dimension=8, index=index)
        await upsert(client, name, [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(rng_vectors(20, 8))])
        assert (await search(client, name, vector=rng_vectors(1, 8)[0].tolist(), top_k=3))["data"]
    listed = {c["name"] for c in (await client.get("/v1/collections")).json()["data"]}
    assert listed == {"ivf", "sq8", "ivfpq"} | (set() if milvus else {name for name, _ in refused})


async def test_duplicate_name_is_409(client):
    await make(client, "dup", dimension=4)
    assert_error(await client.post("/v1/collections", json={"name": "dup", "dimension": 4}), 409, param="name")


async def test_upsert_generates_ids_replaces_existing_and_reads_back(client):
    await make(client, "v", dimension=4)
    first = await upsert(client, "v", [{"vector": [1, 0, 0, 0], "metadata": {"k": 1}}, {"id": "b", "vector": [0, 1, 0, 0]}])
    assert first["upserted"] == 2 and first["ids"][1] == "b" and len(first["ids"][0]) == 32
    assert first["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    await upsert(client, "v", [{"id": "b", "vector": [0, 0, 1, 0], "text": "new", "metadata": {"v": 2}}])
    assert (await client.get("/v1/collections/v")).json()["count"] == 2
    doc = (await client.get("/v1/collections/v/documents/b", params={"include": "vector"})).json()
    assert doc == {"id": "b", "text": "new", "metadata": {"v": 2}, "vector": [0.0, 0.0, 1.0, 0.0]}
    plain = (await client.get("/v1/collections/v/documents/b")).json()
    assert "vector" not in plain
    hits = (await search(client, "v", vector=[0, 0, 1, 0], top_k=10))["data"]
    assert [h["id"] for h in hits] == ["b", first["ids"][0]]  # one "b", the replaced vector is gone
    assert hits[0]["score"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("docs", "fragment"),
    [
        ([{"vector": [1, 2, 3]}], "dimension"),
        ([{"vector": [1, 2, 3, 1e39]}], "NaN or infinite"),
        ([{"text": "no model here"}], "no model"),
        ([{"id": "a", "vector": [1, 0, 0, 0], "metadata": ["not", "object"]}], ""),
        ([{"id": "a", "vector": [1, 0, 0, 0]}, {"id": "a", "vector": [0, 1, 0, 0]}], "twice"),
        ([{"id": "", "vector": [1, 0, 0, 0]}], "id"),
        ([{"id": "x" * 257, "vector": [1, 0, 0, 0]}], "id"),
        ([{"id": "nul\x00", "vector": [1, 0, 0, 0]}], "NUL"),
        ([{"metadata": {"a": 1}}], "vector or a non-empty text"),
        ([], "1 to 1000"),
        ([{"vector": [1, 0, 0, 0]}] * 1001, "1 to 1000"),
    ],
)
async def test_bad_documents_write_nothing(client, docs, fragment):
    await make(client, "v", dimension=4)
    good = {"id": "good", "vector": [1, 1, 1, 1]}
    response = await client.post("/v1/collections/v/documents", json={"documents": [good, *docs]} if docs else {"documents": []})
    error = assert_error(response, 400)
    assert fragment in error["message"]
    assert (await client.get("/v1/collections/v")).json()["count"] == 0
    assert_error(await client.get("/v1/collections/v/documents/good"), 404, code="document_not_found")


async def test_nan_in_json_is_refused(client):
    await make(client, "v", dimension=2)
    response = await client.post("/v1/collections/v/documents", content=b'{"documents": [{"vector": [NaN, 1]}]}',
                                 headers={"content-type": "application/json"})
    assert_error(response, 400)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("index", ["Flat", "HNSW32", "IVF4,Flat"])
async def test_search_matches_exact_numpy_for_each_metric_and_index(client, metric, index):
    vectors = rng_vectors(300, 8, seed=1)
    await make(client, "m", dimension=8, metric=metric, index=index)
    for start in range(0, 300, 100):
        await upsert(client, "m", [{"id": f"d{i}", "vector": vectors[i].tolist(), "metadata": {"i": i}}
                                   for i in range(start, start + 100)])
    query = rng_vectors(1, 8, seed=2)[0]
    hits = (await search(client, "m", vector=query.tolist(), top_k=10))["data"]
    expected = exact_top_k(vectors, query, 10, metric)
    found = [int(h["id"][1:]) for h in hits]
    assert len(set(found) & set(expected)) >= 9  # approximate indexes may swap the 10th
    assert found[0] == expected[0]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=metric != "l2")
    if metric == "l2":
        assert scores[0] == pytest.approx(float(np.linalg.norm(vectors[found[0]] - query)), rel=1e-4)
    elif metric == "dot":
        assert scores[0] == pytest.approx(float(vectors[found[0]] @ query), rel=1e-4)
    else:
        v = vectors[found[0]]
        assert scores[0] == pytest.approx(float(v @ query / np.linalg.norm(v) / np.linalg.norm(query)), rel=1e-4)
    assert set(hits[0]) == {"id", "score", "text", "metadata"} - {"text"} or "metadata" in hits[0]


async def test_filtered_search_returns_the_true_top_k_among_matches(client):
    vectors = rng_vectors(500, 8, seed=3)
    await make(client, "f", dimension=8, index="HNSW32")
    await upsert(client, "f", [{"id": str(i), "vector": vectors[i].tolist(),
                                "metadata": {"group": i % 10, "tag": "even" if i % 2 == 0 else "odd"}}
                               for i in range(500)])
    query = rng_vectors(1, 8, seed=4)[0]
    hits = (await search(client, "f", vector=query.tolist(), top_k=20, filter={"group": 3}))["data"]
    members = [i for i in range(500) if i % 10 == 3]
    expected = [members[j] for j in exact_top_k(vectors[members], query, 20, "cosine")]
    assert [int(h["id"]) for h in hits] == expected
    assert all(h["metadata"]["group"] == 3 for h in hits)
    # a filter matching fewer documents than top_k returns all of them
    few = (await search(client, "f", vector=query.tolist(), top_k=50,
                        filter={"$and": [{"group": {"$in": [1]}}, {"tag": "odd"}]}))["data"]
    assert len(few) == 50 and all(int(h["id"]) % 10 == 1 for h in few)
    none = (await search(client, "f", vector=query.tolist(), filter={"group": 99}))["data"]
    assert none == []


async def test_search_options_include_min_score_and_batches(client):
    await make(client, "o", dimension=2)
    await upsert(client, "o", [{"id": "x", "vector": [1, 0], "text": "ex", "metadata": {"a": 1}},
                               {"id": "y", "vector": [0, 1], "text": "why"},
                               {"id": "xy", "vector": [1, 1], "text": "both"}])
    hits = (await search(client, "o", vector=[1, 0], include=["vector"]))["data"]
    assert hits[0] == {"id": "x", "score": pytest.approx(1.0), "vector": [1.0, 0.0]}
    kept = (await search(client, "o", vector=[1, 0], min_score=0.5))["data"]
    assert [h["id"] for h in kept] == ["x", "xy"]
    assert kept[0]["text"] == "ex" and kept[0]["metadata"] == {"a": 1}
    batch = await search(client, "o", vectors=[[1, 0], [0, 1]], top_k=1)
    assert [[h["id"] for h in hits] for hits in batch["data"]] == [["x"], ["y"]]


async def test_ties_are_ordered_by_insertion(client):
    await make(client, "t", dimension=2)
    await upsert(client, "t", [{"id": name, "vector": [1, 0]} for name in ["c", "a", "b"]])
    for _ in range(3):
        assert [h["id"] for h in (await search(client, "t", vector=[1, 0]))["data"]] == ["c", "a", "b"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "query"),
        ({"vector": [1, 0], "query": "x"}, "query"),
        ({"vector": [1, 0, 0]}, "vector"),
        ({"vector": [1, 0], "top_k": 0}, "top_k"),
        ({"vector": [1, 0], "top_k": 1001}, "top_k"),
        ({"query": "text on a vector collection"}, "query"),
        ({"vectors": []}, "vectors"),
        ({"vector": [1, 0], "filter": {"$bad": 1}}, "filter"),
        ({"vector": [1, 0], "filter": {"a": {"$gt": [1]}}}, "filter"),
        ({"vector": [1, 0], "include": ["nope"]}, "include"),
    ],
)
async def test_bad_searches_are_400(client, body, param):
    await make(client, "s", dimension=2)
    assert_error(await client.post("/v1/collections/s/search", json=body), 400, param=param)


async def test_text_collection_embeds_documents_and_queries(client):
    await make(client, "t", model="tiny-dense")
    texts = ["the quick brown fox", "hello world", "red green blue apple"]
    upserted = await upsert(client, "t", [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    assert upserted["usage"]["prompt_tokens"] > 0
    for i, text in enumerate(texts):
        hits = (await search(client, "t", query=text, top_k=3))["data"]
        # documents get the "document: " prompt and queries "query: ", so scores are below 1
        assert len(hits) == 3 and hits[0]["text"] in texts
    same = (await client.post("/v1/embeddings", json={"model": "tiny-dense", "input": "document: hello world"})).json()
    stored = (await client.get("/v1/collections/t/documents/1", params={"include": "vector"})).json()["vector"]
    np.testing.assert_allclose(stored, same["data"][0]["embedding"], atol=1e-5)
    await make(client, "short", model="tiny", dimension=8)  # Matryoshka-truncated collection
    await upsert(client, "short", [{"id": "a", "text": "hello world"}])
    hits = (await search(client, "short", query="hello world"))["data"]
    assert hits[0]["id"] == "a" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


async def test_pagination_is_stable_and_filterable(client):
    await make(client, "p", dimension=2)
    await upsert(client, "p", [{"id": f"{i:03d}", "vector": [1, i], "metadata": {"odd": i % 2 == 1}} for i in range(25)])
    seen, cursor = [], None
    while True:
        params = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/collections/p/documents", params=params)).json()
        seen += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
        # a write between pages does not disturb the pages still to come
        await upsert(client, "p", [{"id": "000", "vector": [2, 2]}])
    assert seen == [f"{i:03d}" for i in range(25)]
    odd = (await client.get("/v1/collections/p/documents", params={"filter": '{"odd": true}', "limit": 100})).json()
    assert [d["id"] for d in odd["data"]] == [f"{i:03d}" for i in range(1, 25, 2)]
    assert_error(await client.get("/v1/collections/p/documents", params={"filter": "{nope"}), 400, param="filter")
    assert_error(await client.get("/v1/collections/p/documents", params={"limit": 0}), 400, param="limit")
    assert_error(await client.get("/v1/collections/p/documents", params={"cursor": "!!!"}), 400, param="cursor")


async def test_deletes_by_id_ids_and_filter(client):
    await make(client, "d", dimension=2, index="HNSW32")
    await upsert(client, "d", [{"id": str(i), "vector": [1, i], "metadata": {"n": i}} for i in range(20)])
    gone = await client.delete("/v1/collections/d/documents/3")
    assert gone.status_code == 200 and gone.json() == {"id": "3", "object": "document", "deleted": True}
    assert_error(await client.delete("/v1/collections/d/documents/3"), 404, code="document_not_found")
    by_ids = await client.post("/v1/collections/d/documents/delete", json={"ids": ["0", "1", "nope"]})
    assert by_ids.json() == {"deleted": 2}
    by_filter = await client.post("/v1/collections/d/documents/delete", json={"filter": {"n": {"$gte": 10}}})
    assert by_filter.json() == {"deleted": 10}
    both = await client.post("/v1/collections/d/documents/delete", json={"ids": ["4", "5"], "filter": {"n": 4}})
    assert both.json() == {"deleted": 1}
    assert_error(await client.post("/v1/collections/d/documents/delete", json={}), 400)
    left = sorted(int(h["id"]) for h in (await search(client, "d", vector=[1, 5], top_k=100))["data"])
    assert left == [2, 5, 6, 7, 8, 9]
    assert (await client.get("/v1/collections/d")).json()["count"] == 6


async def test_gets_documents_by_ids_in_their_order(client):
    await make(client, "g", dimension=2)
    await upsert(client, "g", [{"id": str(i), "vector": [1, i], "text": f"t{i}", "metadata": {"n": i}} for i in range(5)])
    got = await client.post("/v1/collections/g/documents/get", json={"ids": ["3", "nope", "0", "3"]})
    assert got.status_code == 200
    assert got.json() == {"object": "list", "data": [{"id": "3", "text": "t3", "metadata": {"n": 3}},
                                                     {"id": "0", "text": "t0", "metadata": {"n": 0}},
                                                     {"id": "3", "text": "t3", "metadata": {"n": 3}}]}
    with_vectors = await client.post("/v1/collections/g/documents/get", json={"ids": ["2"], "include": ["vector"]})
    assert with_vectors.json()["data"][0]["vector"] == [1.0, 2.0]
    b64 = await client.post("/v1/collections/g/documents/get",
                            json={"ids": ["2"], "include": ["vector"], "encoding_format": "base64"})
    assert b64.json()["data"][0]["vector"] == base64.b64encode(np.array([1, 2], "<f4").tobytes()).decode()
    assert (await client.post("/v1/collections/g/documents/get", json={"ids": ["nope"]})).json()["data"] == []
    assert_error(await client.post("/v1/collections/g/documents/get", json={"ids": []}), 400, param="ids")
    assert_error(await client.post("/v1/collections/g/documents/get", json={"ids": ["x"] * 1001}), 400, param="ids")
    assert_error(await client.post("/v1/collections/g/documents/get", json={"ids": ["a\x00"]}), 400, param="ids")
    assert_error(await client.post("/v1/collections/g/documents/get", json={"ids": ["1"], "include": ["text"]}), 400)
    assert_error(await client.post("/v1/collections/nope/documents/get", json={"ids": ["1"]}), 404)


async def test_an_unknown_include_is_a_400_on_every_route_that_takes_one(client):
    """One rule: GET .../documents/{id} and POST .../documents/get take `vector` alone, search text, metadata
    and vector; anything else is a 400 naming include, on each of them."""
    await make(client, "inc", dimension=2)
    await upsert(client, "inc", [{"id": "a", "vector": [1, 0], "text": "t"}])
    for value in ("secret", "text", "metadata", ""):
        assert_error(await client.get("/v1/collections/inc/documents/a", params={"include": value}), 400,
                     param="include")
        assert_error(await client.post("/v1/collections/inc/documents/get", json={"ids": ["a"], "include": [value]}),
                     400, param="include")
    for value in ("secret", ""):
        assert_error(await client.post("/v1/collections/inc/search", json={"vector": [1, 0], "include": [value]}),
                     400, param="include")
    got = await client.get("/v1/collections/inc/documents/a", params={"include": "vector"})
    assert got.status_code == 200 and got.json()["vector"] == [1.0, 0.0]


async def test_tenants_cannot_see_each_others_collections(client):
    other = {"Authorization": f"Bearer {client.app.state.services.keys.create('other')}"}
    await make(client, "mine", dimension=2)
    await upsert(client, "mine", [{"id": "secret", "vector": [1, 0]}])
    checks = [
        ("GET", "/v1/collections/mine", None),
        ("DELETE", "/v1/collections/mine", None),
        ("POST", "/v1/collections/mine/documents", {"documents": [{"vector": [1, 0]}]}),
        ("GET", "/v1/collections/mine/documents", None),
        ("GET", "/v1/collections/mine/documents/secret", None),
        ("DELETE", "/v1/collections/mine/documents/secret", None),
        ("POST", "/v1/collections/mine/documents/delete", {"ids": ["secret"]}),
        ("POST", "/v1/collections/mine/documents/get", {"ids": ["secret"]}),
        ("POST", "/v1/collections/mine/search", {"vector": [1, 0]}),
    ]
    for method, path, body in checks:
        assert_error(await client.request(method, path, json=body, headers=other), 404)
    assert (await client.get("/v1/collections", headers=other)).json()["data"] == []
    # the other tenant may use the same name for a collection of its own
    assert (await client.post("/v1/collections", json={"name": "mine", "dimension": 3}, headers=other)).status_code == 201
    assert (await client.get("/v1/collections/mine/documents/secret")).status_code == 200
    assert (await client.get("/v1/collections/mine")).json()["dimension"] == 2


@pytest.mark.parametrize("damage", ["none", "missing", "corrupt", "stale"])
async def test_restart_loads_replays_or_rebuilds_the_index(settings, damage):
    from tests.conftest import app_client

    vectors = rng_vectors(200, 8, seed=5)
    docs = [{"id": str(i), "vector": vectors[i].tolist()} for i in range(200)]
    async with app_client(settings) as client:
        await make(client, "r", dimension=8, index="HNSW32")
        await upsert(client, "r", docs[:100])
    index_file = next((settings.data_dir / "indexes").glob("*.faiss"))
    stale = index_file.read_bytes()
    async with app_client(settings) as client:  # more writes, then a clean stop
        await upsert(client, "r", docs[100:])
        await client.delete("/v1/collections/r/documents/0")
    if damage == "missing":
        index_file.unlink()
    elif damage == "corrupt":
        index_file.write_bytes(index_file.read_bytes()[:-100])
    elif damage == "stale":  # an older snapshot: the writes after it are replayed from SQL
        index_file.write_bytes(stale)
    async with app_client(settings) as client:
        info = (await client.get("/v1/collections/r")).json()
        assert info["count"] == info["indexed"] == 199
        for i in (1, 150, 199):
            assert (await search(client, "r", vector=vectors[i].tolist(), top_k=1))["data"][0]["id"] == str(i)
        assert "0" not in [h["id"] for h in (await search(client, "r", vector=vectors[0].tolist(), top_k=5))["data"]]


async def test_ids_with_slashes_and_spaces_are_reachable_by_path(client):
    from urllib.parse import quote

    await make(client, "ids", dimension=2)
    odd = ["a/b", "dir/sub/file.txt", "with space", "ünï✓", "Zed"]
    await upsert(client, "ids", [{"id": i, "vector": [1, 0]} for i in odd])
    for doc_id in odd:
        got = await client.get(f"/v1/collections/ids/documents/{quote(doc_id, safe='')}")
        assert got.status_code == 200 and got.json()["id"] == doc_id, (doc_id, got.text)
    assert (await client.delete(f"/v1/collections/ids/documents/{quote('a/b', safe='')}")).status_code == 200
    assert (await client.get("/v1/collections/ids")).json()["count"] == 4
    assert [d["id"] for d in (await client.get("/v1/collections/ids/documents")).json()["data"]] == [
        "Zed", "dir/sub/file.txt", "with space", "ünï✓"]


async def test_filtered_search_stays_exact_across_writes(client):
    """Filter answers are cached per filter and updated with each write: replacements moving documents
    in and out of the filter, deletes and new documents must all show up in the very next search."""
    rng = np.random.default_rng(7)
    await make(client, "w", dimension=4)
    truth: dict[str, dict] = {}

    async def put(ids, groups):
        docs = [{"id": i, "vector": rng.standard_normal(4).tolist(), "metadata": {"g": g, "k": "x"}}
                for i, g in zip(ids, groups)]
        await upsert(client, "w", docs)
        truth.update({d["id"]: d["metadata"] for d in docs})

    async def check():
        for flt in ({"g": 1, "k": "x"}, {"k": "x", "g": 1}, {"g": {"$in": [1, 2]}}):
            hits = (await search(client, "w", vector=[1, 0, 0, 0], top_k=1000, filter=flt))["data"]
            wanted = {i for i, m in truth.items() if m["g"] in ((1,) if "k" in flt else (1, 2))}
            assert {h["id"] for h in hits} == wanted, flt

    await put([str(i) for i in range(60)], [i % 3 for i in range(60)])
    await check()
    await put(["0", "1", "2", "3"], [1, 0, 1, 2])  # replacements move documents in and out
    await check()
    deleted = await client.post("/v1/collections/w/documents/delete", json={"ids": ["4", "7", "10"]})
    assert deleted.json() == {"deleted": 3}
    for i in ("4", "7", "10"):
        del truth[i]
    await check()
    await put(["new-a", "new-b"], [1, 2])
    by_filter = await client.post("/v1/collections/w/documents/delete", json={"filter": {"g": 2}})
    assert by_filter.status_code == 200
    truth = {i: m for i, m in truth.items() if m["g"] != 2}
    await check()


async def test_periodic_snapshots_are_spaced_by_their_own_duration(client, monkeypatch):
    """A periodic snapshot whose file took T seconds to write is not repeated for 10 T (the disk has other
    work); the snapshot at shutdown is never skipped."""
    engine = client.app.state.services.engine
    if engine.snapshots is None:
        pytest.skip("the Milvus backend takes no snapshots")
    await make(client, "s", dimension=2)
    await upsert(client, "s", [{"id": "a", "vector": [1, 0]}])
    row = await client.app.state.services.collections.get("admin", "s")
    live = next(live for live in engine.indexes.live() if live.row.id == row.id)
    from index import Snapshot

    write = Snapshot.write

    def slow_write(snapshot, path):  # a file as slow to write as a big index's
        time.sleep(0.3)
        write(snapshot, path)

    monkeypatch.setattr(Snapshot, "write", slow_write)
    await engine.snapshots.save_all(periodic=True)
    assert live.saved_position == live.position
    assert live.next_snapshot - time.monotonic() > 2.0  # at least 10 x 0.3 s, less the time since
    await upsert(client, "s", [{"id": "b", "vector": [0, 1]}])
    await engine.snapshots.save_all(periodic=True)
    assert live.saved_position < live.position  # skipped: too soon after a 0.3 s write
    await engine.snapshots.save_all()
    assert live.saved_position == live.position


async def test_collections_past_the_tenants_quota_are_a_403_and_the_list_comes_a_page_at_a_time(settings):
    import msgspec

    from tests.conftest import app_client

    async with app_client(msgspec.structs.replace(settings, max_collections=3)) as client:
        for name in ("c", "a", "b"):
            await make(client, name, dimension=2)
        refused = await client.post("/v1/collections", json={"name": "d", "dimension": 2})
        assert_error(refused, 403, param="name", code="collection_quota_exceeded")
        assert "3" in refused.json()["error"]["message"]
        first = (await client.get("/v1/collections", params={"limit": 2})).json()
        assert [c["name"] for c in first["data"]] == ["a", "b"] and first["has_more"]
        rest = (await client.get("/v1/collections", params={"limit": 2, "cursor": first["next_cursor"]})).json()
        assert [c["name"] for c in rest["data"]] == ["c"] and not rest["has_more"] and rest["next_cursor"] is None
        assert_error(await client.get("/v1/collections", params={"limit": 0}), 400, param="limit")
        assert (await client.delete("/v1/collections/a")).status_code == 200
        await make(client, "d", dimension=2)  # room again
