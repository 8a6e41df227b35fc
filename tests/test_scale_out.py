"""The Milvus backend past one process, with milvus-lite as a server of its own.

Two stateless fronts: two service processes (separate data dirs) sharing one PostgreSQL and one Milvus, as
behind a load balancer. A write acknowledged by either is searchable through the other at once; concurrent
writes through both leave Milvus exactly as SQL has it; a collection made, or deleted, through one is seen
so by the other. And Milvus going away: writes stay acknowledged (they are in SQL), searches answer 503
until it is back, then find them; a front started while Milvus is down serves once it is up; a Milvus that
lost a collection gets it back from SQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.tiny_model import WORDS
from tests.conftest import API_KEY
from tests.postgres import fresh_database
from tests.server import MilvusLiteServer, ServerProcess

pytestmark = pytest.mark.system

AUTH = {"Authorization": f"Bearer {API_KEY}"}
DIM = 8


def eventually_404(client: httpx.Client, path: str) -> None:
    """A front that had the collection open answers 503 collection_changed once, then 404 (as a client that
    retries on 503 sees it)."""
    for _ in range(3):
        response = client.get(path)
        if response.status_code != 503:
            break
        time.sleep(float(response.headers.get("retry-after", "1")))
    assert response.status_code == 404, response.text


def test_a_write_through_one_front_is_searchable_through_the_other(tmp_path: Path, models_file: Path,
                                                                   postgres_url: str) -> None:
    milvus = MilvusLiteServer(tmp_path / "milvus").start()
    fronts: list[ServerProcess] = []
    try:
        with fresh_database(postgres_url) as database:
            env = {"EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny",
                   "EMBEDSEARCH_MODELS_FILE": str(models_file), "EMBEDSEARCH_WORKERS": "1",
                   "EMBEDSEARCH_DATABASE_URL": database, "EMBEDSEARCH_VECTOR_BACKEND": "milvus",
                   "EMBEDSEARCH_MILVUS_URI": milvus.uri, "EMBEDSEARCH_SNAPSHOT_SECONDS": "1"}
            fronts = [ServerProcess(tmp_path / name, env).start() for name in ("front-a", "front-b")]
            a, b = (httpx.Client(base_url=front.url, headers=AUTH, timeout=30) for front in fronts)
            check_one_way_and_back(a, b)
            check_concurrent_writes(a, b)
            assert a.delete("/v1/collections/vectors").status_code == 200
            eventually_404(b, "/v1/collections/vectors")
            for front in fronts:
                assert front.stop() == 0
    finally:
        for front in fronts:
            front.kill()
        milvus.stop()


def check_one_way_and_back(a: httpx.Client, b: httpx.Client) -> None:
    """Text documents written through A are found through B by vector, keyword and filter; B's replacements
    and deletes are found so through A."""
    assert a.post("/v1/collections", json={"name": "texts", "model": "tiny"}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"{WORDS[20 + i]} {WORDS[30 + i]} {WORDS[40 + i % 10]}",
             "metadata": {"n": i, "even": i % 2 == 0}} for i in range(12)]
    assert a.post("/v1/collections/texts/documents", json={"documents": docs}).status_code == 200
    found = b.post("/v1/collections/texts/search", json={"query": docs[3]["text"], "top_k": 1}).json()
    assert found["data"][0]["id"] == "d3"
    keyword = b.post("/v1/collections/texts/search", json={"query": WORDS[25], "mode": "keyword"}).json()
    assert [h["id"] for h in keyword["data"]] == ["d5"]
    for flt, wanted in [({"even": True}, {f"d{i}" for i in range(0, 12, 2)}),  # compiled for Milvus
                        ({"$not": {"n": {"$gt": 3}}}, {"d0", "d1", "d2", "d3"})]:  # evaluated by SQL
        hits = b.post("/v1/collections/texts/search", json={"query": "cat", "top_k": 20, "filter": flt}).json()
        assert {h["id"] for h in hits["data"]} == wanted, flt

    replaced = {"id": "d3", "text": "slow big small", "metadata": {"n": 3}}
    assert b.post("/v1/collections/texts/documents", json={"documents": [replaced]}).status_code == 200
    assert b.delete("/v1/collections/texts/documents/d4").status_code == 200
    keyword = a.post("/v1/collections/texts/search", json={"queries": ["small", WORDS[23], WORDS[24]],
                                                           "mode": "keyword"}).json()
    assert [[h["id"] for h in hits] for hits in keyword["data"]] == [["d3"], [], []]
    info = a.get("/v1/collections/texts").json()
    assert info["count"] == info["indexed"] == 11


def check_concurrent_writes(a: httpx.Client, b: httpx.Client) -> None:
    """Both fronts upsert (overlapping ids, so each replaces the other's documents) and delete at once; then
    Milvus holds exactly what SQL holds, as both fronts see it."""
    assert b.post("/v1/collections", json={"name": "vectors", "dimension": DIM, "metric": "l2"}).status_code == 201
    errors: list[str] = []

    def write(client: httpx.Client, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for batch in range(15):
            ids = [f"v{rng.integers(0, 60)}" for _ in range(8)]
            docs = [{"id": i, "vector": rng.standard_normal(DIM).tolist()} for i in dict.fromkeys(ids)]
            response = client.post("/v1/collections/vectors/documents", json={"documents": docs})
            if response.status_code != 200:
                errors.append(response.text)
            if batch % 4 == 3:
                client.delete(f"/v1/collections/vectors/documents/v{rng.integers(0, 60)}")

    threads = [threading.Thread(target=write, args=(client, seed)) for seed, client in enumerate((a, b, a, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    ids = [d["id"] for d in a.get("/v1/collections/vectors/documents", params={"limit": 1000}).json()["data"]]
    stored = a.post("/v1/collections/vectors/documents/get", json={"ids": ids, "include": ["vector"]}).json()["data"]
    for client in (a, b):
        info = client.get("/v1/collections/vectors").json()
        assert info["count"] == info["indexed"] == len(stored)
        found = client.post("/v1/collections/vectors/search",
                            json={"vectors": [d["vector"] for d in stored], "top_k": 1}).json()
        assert [hits[0]["id"] for hits in found["data"]] == [d["id"] for d in stored]


def search_when_back(client: httpx.Client, body: dict, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.post("/v1/collections/c/search", json=body)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        assert response.status_code == 503 and response.json()["error"]["code"] == "vector_backend_unavailable"
        time.sleep(0.5)


def test_milvus_outages_lose_no_acknowledged_write(tmp_path: Path, models_file: Path) -> None:
    milvus = MilvusLiteServer(tmp_path / "milvus").start()
    env = {"EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
           "EMBEDSEARCH_WORKERS": "1", "EMBEDSEARCH_VECTOR_BACKEND": "milvus", "EMBEDSEARCH_MILVUS_URI": milvus.uri,
           "EMBEDSEARCH_ENGINE_DEADLINE_SECONDS": "2", "EMBEDSEARCH_SNAPSHOT_SECONDS": "1"}
    front = ServerProcess(tmp_path / "front", env)
    try:
        front.start()
        client = httpx.Client(base_url=front.url, headers=AUTH, timeout=60)
        assert client.post("/v1/collections", json={"name": "c", "dimension": 2}).status_code == 201
        docs = [{"id": "a", "vector": [1, 0]}, {"id": "b", "vector": [0, 1]}]
        assert client.post("/v1/collections/c/documents", json={"documents": docs}).status_code == 200

        milvus.stop()  # Milvus goes away: a write is still acknowledged (it is in SQL), a search is a 503
        assert client.post("/v1/collections/c/documents", json={"documents": [
            {"id": "c", "vector": [1, 1]}]}).status_code == 200
        response = client.post("/v1/collections/c/search", json={"vector": [1, 1], "top_k": 1})
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        milvus = MilvusLiteServer(tmp_path / "milvus", milvus.port).start()
        assert search_when_back(client, {"vector": [1, 1], "top_k": 1})["data"][0]["id"] == "c"

        assert front.stop() == 0
        milvus.stop()  # a front that starts while Milvus is down: ready, its searches 503 until Milvus is up
        front.start()
        assert client.post("/v1/collections/c/search", json={"vector": [1, 0], "top_k": 1}).status_code == 503
        milvus = MilvusLiteServer(tmp_path / "milvus", milvus.port).start()
        assert search_when_back(client, {"vector": [1, 0], "top_k": 1})["data"][0]["id"] == "a"

        assert front.stop() == 0  # a Milvus that lost the collection: the next start fills it again from SQL
        from pymilvus import MilvusClient

        MilvusClient(milvus.uri).drop_collection("embedsearch_1")
        front.start()
        info = client.get("/v1/collections/c").json()
        assert info["count"] == info["indexed"] == 3
        found = client.post("/v1/collections/c/search", json={"vectors": [[1, 0], [0, 1], [1, 1]], "top_k": 1}).json()
        assert [hits[0]["id"] for hits in found["data"]] == ["a", "b", "c"]
        assert front.stop() == 0
    finally:
        front.kill()
        milvus.stop()
