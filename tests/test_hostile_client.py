"""What one valid key can send must not brick, exhaust or misaddress the service (issue: hostile client).

Each test names the hole it closes; each failed before its fix: a zero vector that was committed and
then bricked every later start, ids with slashes that reached other documents, answers without a
size bound, a metadata depth off by one, an empty body answered with "'data'", a tenant key that
could read the admin's collections.
"""

from __future__ import annotations

import contextlib
from urllib.parse import quote

import msgspec
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import app_client
from tests.postgres import fresh_database
from tests.test_collections_api import make, search, upsert
from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.integration


def doc_path(collection: str, doc_id: str) -> str:
    """Every reserved character percent-encoded, and dots too: clients resolve `.` and `..` segments."""
    return f"/v1/collections/{collection}/documents/{quote(doc_id, safe='').replace('.', '%2E')}"


@contextlib.contextmanager
def database(request: pytest.FixtureRequest, settings, backend: str):
    """``settings`` on a fresh SQLite file or a fresh PostgreSQL database, for tests that restart the app."""
    if backend == "sqlite":
        yield settings
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield msgspec.structs.replace(settings, database_url=url)


# -- zero vectors ------------------------------------------------------------------------------


async def test_a_zero_vector_in_a_cosine_collection_is_a_400_and_nothing_is_written(db_client):
    client = db_client
    await make(client, "z", dimension=2)
    body = {"documents": [{"id": "ok", "vector": [1, 0]}, {"id": "q", "vector": [0, 0]}]}
    response = await client.post("/v1/collections/z/documents", json=body)
    assert_error(response, 400, param="documents")
    assert "documents[1].vector is all zeros" in response.json()["error"]["message"]
    assert (await client.get("/v1/collections/z")).json()["count"] == 0
    assert (await client.get(doc_path("z", "q"))).status_code == 404
    assert_error(await client.post("/v1/collections/z/search", json={"vector": [0, 0]}), 400, param="vector")
    assert_error(await client.post("/v1/collections/z/search", json={"vectors": [[1, 0], [0.0, -0.0]]}), 400,
                 param="vectors")
    # Only cosine needs a direction: dot and l2 take zero vectors, and find them.
    for metric in ("dot", "l2"):
        await make(client, metric, dimension=2, metric=metric)
        await upsert(client, metric, [{"id": "zero", "vector": [0, 0]}])
        assert (await search(client, metric, vector=[0, 0]))["data"][0]["id"] == "zero"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_collection_that_cannot_be_opened_leaves_the_others_serving(request, settings, backend):
    """A row that cannot be indexed (written before zero vectors were refused) fails its own collection on
    start-up, which answers 503 and can be deleted; the server and every other collection serve."""
    with database(request, settings, backend) as settings:
        async with app_client(settings) as client:
            await make(client, "good", dimension=2)
            await make(client, "bad", dimension=2)
            await upsert(client, "good", [{"id": "g", "vector": [1, 0]}])
            await upsert(client, "bad", [{"id": "ok", "vector": [1, 0]}, {"id": "q", "vector": [0, 1]}])
            bad_id = (await client.get("/v1/collections/bad")).json()
        engine = create_engine(settings.sqlalchemy_url)
        with engine.begin() as conn:  # as an older release stored it
            conn.execute(text("UPDATE documents SET vector = :zero WHERE id = 'q'"), {"zero": bytes(8)})
        engine.dispose()
        for index_file in (settings.data_dir / "indexes").glob("*.faiss"):
            index_file.unlink()  # so that start-up rebuilds from SQL
        async with app_client(settings) as client:
            assert (await search(client, "good", vector=[1, 0]))["data"][0]["id"] == "g"
            for response in (await client.get("/v1/collections/bad"),
                             await client.post("/v1/collections/bad/search", json={"vector": [1, 0]})):
                assert_error(response, 503, code="collection_unavailable")
            listed = {c["name"]: c["status"] for c in (await client.get("/v1/collections")).json()["data"]}
            assert listed == {"bad": "unavailable", "good": "ready"}
            ready = (await client.get("/ready")).json()
            assert ready["status"] == "ready" and len(ready["collections"]["failed"]) == 1, (ready, bad_id)
            assert (await client.delete("/v1/collections/bad")).status_code == 200
            assert_error(await client.get("/v1/collections/bad"), 404, code="collection_not_found")
            assert (await client.get("/ready")).json()["collections"]["failed"] == []


# -- ids with slashes --------------------------------------------------------------------------

ODD_IDS = ["lead", "/lead", "a/b", "a//b", "t/", "t", "//dbl", "dbl", "/", "%41", "A", "a?b#c", "x/../y", ".."]


async def test_ids_with_slashes_address_exactly_their_document(client):
    await make(client, "ids", dimension=2)
    await upsert(client, "ids", [{"id": i, "vector": [1, 0], "metadata": {"id": i}} for i in ODD_IDS])
    for doc_id in ODD_IDS:
        got = await client.get(doc_path("ids", doc_id))
        assert got.status_code == 200 and got.json()["metadata"] == {"id": doc_id}, (doc_id, got.text)
    for doc_id in ("/lead", "t/", "//dbl", "/", "%41"):
        assert (await client.delete(doc_path("ids", doc_id))).status_code == 200, doc_id
        assert (await client.get(doc_path("ids", doc_id))).status_code == 404, doc_id
    left = [d["id"] for d in (await client.get("/v1/collections/ids/documents")).json()["data"]]
    assert sorted(left) == sorted(set(ODD_IDS) - {"/lead", "t/", "//dbl", "/", "%41"})


# -- bounded answers ---------------------------------------------------------------------------


async def test_search_work_and_answer_size_are_bounded(client, monkeypatch):
    import service.domain.validation

    await make(client, "big", dimension=4)
    vectors = np.random.default_rng(0).standard_normal((50, 4))
    await upsert(client, "big", [{"id": str(i), "vector": v.tolist(), "text": "x" * 1000} for i, v in enumerate(vectors)])
    ten = vectors[:10].tolist()
    assert len((await search(client, "big", vectors=ten, top_k=1000))["data"]) == 10  # 10,000 hits: the limit
    assert_error(await client.post("/v1/collections/big/search", json={"vectors": ten + ten[:1], "top_k": 1000}),
                 400, param="top_k")
    monkeypatch.setattr(service.domain.validation, "MAX_RESPONSE_VALUES", 4 * 40)
    assert len((await search(client, "big", vector=ten[0], top_k=40, include=["vector"]))["data"]) == 40
    assert_error(await client.post("/v1/collections/big/search",
                                   json={"vector": ten[0], "top_k": 41, "include": ["vector"]}), 400, param="include")
    monkeypatch.setattr(service.domain.validation, "MAX_RESPONSE_BYTES", 20_100)
    response = await client.post("/v1/collections/big/search", json={"vector": ten[0], "top_k": 21})
    assert_error(response, 400, param="top_k", code="response_too_large")
    assert len((await search(client, "big", vector=ten[0], top_k=21, include=["metadata"]))["data"]) == 21
    assert_error(await client.get("/v1/collections/big/documents", params={"limit": 21}), 400,
                 param="limit", code="response_too_large")
    assert len((await client.get("/v1/collections/big/documents", params={"limit": 20})).json()["data"]) == 20


# -- small limits, exactly -----------------------------------------------------------------------


def nested_metadata(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


async def test_metadata_nests_32_levels_and_not_33(client):
    await make(client, "deep", dimension=2)
    await upsert(client, "deep", [{"id": "32", "vector": [1, 0], "metadata": nested_metadata(32)}])
    response = await client.post("/v1/collections/deep/documents",
                                 json={"documents": [{"id": "33", "vector": [1, 0], "metadata": nested_metadata(33)}]})
    assert_error(response, 400, param="documents")
    assert "more than 32 levels" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/collections", "/v1/collections/x/search"])
async def test_an_empty_body_says_so(client, path):
    response = await client.post(path, content=b" ", headers={"content-type": "application/json"})
    assert_error(response, 400, code="empty_body")
    assert response.json()["error"]["message"] == "The request body is empty; send a JSON object."


async def test_the_admin_tenant_is_reserved_for_admin_keys(client, settings):
    from service.cli import main

    with pytest.raises(SystemExit, match="reserved for admin keys"):
        main(["keys", "create", "--tenant", "admin", "--data-dir", str(settings.data_dir)])
    await make(client, "mine", dimension=2)  # the admin key's collection stays the admin's alone
    main(["keys", "create", "--tenant", "admins", "--data-dir", str(settings.data_dir)])


@pytest.mark.parametrize("index, words", [
    ("HNSW1000000", "HNSW M must be between 2 and 128, got 1000000"),
    ("HNSW999999999", "numbers must be at most 1048576, got 999999999"),
    ("IVF99999999999,Flat", "at most 1048576"),
    ("PQ2x20", "nbits must be between 1 and 16"),
    ("HNSW32,Foo", "is not"),
])
async def test_index_parameters_are_bounded_and_explained_in_our_words(client, index, words):
    response = await client.post("/v1/collections", json={"name": "h", "dimension": 4, "index": index})
    assert_error(response, 400, param="index")
    message = response.json()["error"]["message"]
    assert words in message and "C++" not in message and "stoi" not in message and ".cpp" not in message, message


async def test_a_search_answer_is_built_off_the_event_loop(client, monkeypatch):
    """256 queries x top_k 1000 used to stall every other request while their hits were shaped on the loop;
    an answer of more than a few dozen hits is now shaped and encoded in a worker thread."""
    import asyncio

    import service.api.wire

    on_loop = []
    shape = service.api.wire.found

    def recording(*args, **kwargs):
        try:
            asyncio.get_running_loop()  # only the event loop's thread has a running loop
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return shape(*args, **kwargs)

    monkeypatch.setattr(service.api.wire, "found", recording)
    await make(client, "loop", dimension=2)
    await upsert(client, "loop", [{"id": str(i), "vector": [1, i]} for i in range(100)])
    await search(client, "loop", vectors=[[1, 0]] * 3, top_k=50)
    await search(client, "loop", vector=[1, 0], top_k=1, include=["vector"])
    await search(client, "loop", vector=[1, 0], top_k=10)  # small: shaped on the loop, no thread hop
    assert on_loop == [False, False, True]
