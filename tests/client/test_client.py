"""embedsearch.Client against a live server on loopback: every route, every error class, batching past
the server's limits, retries on 429 and 503."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

import embedsearch
from embedsearch import Client, Document
from embedsearch import _api
from tests.client.conftest import MAX_BODY_BYTES
from tests.conftest import API_KEY
from tests.server import ServerProcess
from tests.test_processes import ready, role, wait_for

pytestmark = [pytest.mark.system, pytest.mark.filterwarnings("ignore::ResourceWarning")]

OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}


def unit(rows: int, dimension: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_settings_come_from_the_environment_as_openai_does(live: ServerProcess, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMBEDSEARCH_API_KEY", API_KEY)
    monkeypatch.setenv("EMBEDSEARCH_BASE_URL", live.url + "/v1")
    with Client() as client:
        assert client.base_url == live.url + "/v1"
        assert [m.id for m in client.list_models()] == ["tiny"]
    with Client(live.url) as client:  # the root URL, without /v1, is taken too
        assert client.get_model("tiny").owned_by
    monkeypatch.delenv("EMBEDSEARCH_API_KEY")
    with pytest.raises(embedsearch.EmbedsearchError, match="EMBEDSEARCH_API_KEY"):
        Client(live.url)


def test_embeddings_as_arrays_in_batches_under_the_token_limit(client: Client, live: ServerProcess):
    one = client.embed("hello world", model="tiny")
    assert one.shape == (1, 64) and one.dtype == np.float32
    raw = httpx.post(live.url + "/v1/embeddings", json={"model": "tiny", "input": ["hello world"]},
                     headers={"Authorization": f"Bearer {API_KEY}"}).json()
    np.testing.assert_allclose(one[0], raw["data"][0]["embedding"], atol=1e-6)
    short = client.embed(["a", "b"], model="tiny", dimensions=8)
    assert short.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1, atol=1e-5)
    # 300 texts of ~12 tokens are more than the server's 2000 tokens a request: split, rows in order
    texts = [f"text number {i} about something quite different each time" for i in range(300)]
    many = client.embed(texts, model="tiny")
    assert many.shape == (300, 64)
    np.testing.assert_allclose(many[[0, 150, 299]], client.embed([texts[0], texts[150], texts[299]], model="tiny"),
                               atol=1e-5)
    assert client.embed([], model="tiny").shape[0] == 0
    with pytest.raises(embedsearch.NotFoundError) as missing:
        client.embed("x", model="nope")
    assert missing.value.code == "model_not_found" and set(missing.value.error) == OPENAI_ERROR_KEYS
    with pytest.raises(embedsearch.NotFoundError):
        client.get_model("nope")


def test_collections_lifecycle(client: Client, name: str):
    kb = client.create_collection(name, model="tiny", index="HNSW32")
    info = kb.info()
    assert (info.name, info.model, info.dimension, info.metric, info.index, info.count) == (
        name, "tiny", 64, "cosine", "HNSW32", 0)
    assert info.created_at.year >= 2024 and info.status == "ready"
    assert name in [c.name for c in client.list_collections()]
    assert client.get_collection(name).name == name
    with pytest.raises(embedsearch.ConflictError) as duplicate:
        client.create_collection(name, dimension=3)
    assert duplicate.value.status_code == 409
    with pytest.raises(embedsearch.BadRequestError) as bad:
        client.create_collection(name + "-x", dimension=3, index="NoSuchIndex")
    assert bad.value.param == "index"
    client.delete_collection(name)
    with pytest.raises(embedsearch.NotFoundError):
        client.get_collection(name)
    with pytest.raises(embedsearch.NotFoundError):
        client.collection(name).search(vector=[1.0] * 64)


def test_documents_upsert_get_page_delete(client: Client, name: str):
    vectors = unit(250, 8)
    kb = client.create_collection(name, dimension=8)
    ids = kb.upsert([{"id": f"{i:03d}", "vector": vectors[i], "text": f"t{i}", "metadata": {"n": i, "odd": i % 2 == 1}}
                     for i in range(248)]
                    + [Document(text="no id", vector=vectors[248]), {"vector": vectors[249].tolist()}])
    assert ids[:3] == ["000", "001", "002"] and len(ids) == 250 and len(set(ids)) == 250
    assert kb.count() == 250
    made = kb.get(ids[248], include_vector=True)  # an id the client made, stored as it said
    assert made.text == "no id" and made.metadata == {}
    np.testing.assert_allclose(made.vector, vectors[248], atol=1e-7)
    doc = kb.get("007")
    assert (doc.id, doc.text, doc.metadata, doc.vector) == ("007", "t7", {"n": 7, "odd": True}, None)
    assert [d.id for d in kb.get_many(["009", "nope", "003"])] == ["009", "003"]
    many = kb.get_many([f"{i:03d}" for i in range(248)] * 5, include_vector=True)  # 1240 ids: two requests
    assert len(many) == 1240 and many[1000].id == f"{1000 % 248:03d}"
    np.testing.assert_allclose(many[3].vector, vectors[3], atol=1e-7)
    page = kb.page(limit=10)
    assert [d.id for d in page.documents] == [f"{i:03d}" for i in range(10)] and page.has_more
    assert [d.id for d in kb.page(limit=10, cursor=page.next_cursor).documents][0] == "010"
    assert sorted(d.id for d in kb.documents(page_size=37)) == sorted(ids)
    assert [d.id for d in kb.documents(filter={"odd": True, "n": {"$lt": 10}})] == ["001", "003", "005", "007", "009"]
    assert kb.delete(["000", "001", "nope"]) == 2
    assert kb.delete(filter={"n": {"$gte": 200}}) == 48
    kb.delete_one("002")
    with pytest.raises(embedsearch.NotFoundError) as gone:
        kb.delete_one("002")
    assert gone.value.code == "document_not_found"
    with pytest.raises(embedsearch.NotFoundError):
        kb.get("002")
    assert kb.count() == 250 - 2 - 48 - 1
    assert kb.delete(filter={}) == 199 and kb.count() == 0
    # one bad document refuses its batch, naming the field
    with pytest.raises(embedsearch.BadRequestError) as wrong:
        kb.upsert([{"id": "x", "vector": [1.0, 2.0]}])
    assert wrong.value.param == "documents" and "dimension" in wrong.value.message
    with pytest.raises(ValueError):
        kb.upsert([{"id": "x", "vectr": [1.0] * 8}])


def test_ids_with_slashes_and_dots_reach_their_documents(client: Client, name: str):
    kb = client.create_collection(name, dimension=2)
    odd = ["a/b", "/lead", ".", "..", "sp ace", "q?x=1#f", "ünï"]
    kb.upsert([{"id": i, "vector": [1.0, float(n)]} for n, i in enumerate(odd)])
    for i in odd:
        assert kb.get(i).id == i
    kb.delete_one("..")
    assert sorted(d.id for d in kb.documents()) == sorted(set(odd) - {".."})


def test_bulk_upsert_splits_past_the_body_limit_with_a_progress_bar(client: Client, name: str,
                                                                    capsys: pytest.CaptureFixture):
    vectors = unit(2500, 256, seed=1)
    kb = client.create_collection(name, dimension=256, metric="dot")
    docs = [{"id": str(i), "vector": vectors[i], "metadata": {"i": i}} for i in range(2500)]
    # 1000 base64 vectors of 256 dimensions are 1.4 MB, past this server's 1 MiB: each batch is halved
    assert len(list(_api.Batches([_api.document_in(d) for d in docs], 1000))) == 3
    ids = kb.upsert(docs, progress=True)
    assert ids == [str(i) for i in range(2500)] and kb.count() == 2500
    assert f"upsert {name}" in capsys.readouterr().err
    hit = kb.search(vector=vectors[1234], top_k=1)[0]
    assert hit.id == "1234" and hit.score == pytest.approx(1.0, abs=1e-5)
    # texts past the server's tokens per request are split likewise
    texts = client.create_collection(name + "-t", model="tiny")
    words = [{"id": str(i), "text": f"document {i} says something rather long about topic {i % 7}"} for i in range(400)]
    assert len(texts.upsert(words)) == 400 and texts.count() == 400
    # a single document over the body limit cannot be split: the 413 comes through
    with pytest.raises(embedsearch.RequestTooLargeError) as large:
        texts.upsert([{"id": "big", "text": "x " * MAX_BODY_BYTES}])
    assert large.value.status_code == 413 and large.value.code == "request_too_large"


def test_search_by_text_vector_and_batches(client: Client, name: str):
    kb = client.create_collection(name, model="tiny")
    # words the tiny model's tokenizer knows (benchmarks/tiny_model.py): others all read as one unknown token
    kb.upsert([{"id": "apple", "text": "a big red apple", "metadata": {"topic": "food"}},
               {"id": "server", "text": "the fast vector search server", "metadata": {"topic": "tech"}},
               {"id": "banana", "text": "green banana and cherry", "metadata": {"topic": "food"}}])
    hits = kb.search("green banana and cherry", top_k=3)
    assert hits[0].id == "banana" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].text == "green banana and cherry" and hits[0].metadata == {"topic": "food"}
    assert hits[1].score < 0.999
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    food = kb.search("the fast vector search server", top_k=3, filter={"topic": "food"}, include=["vector"])
    assert {h.id for h in food} == {"apple", "banana"} and food[0].text is None and food[0].vector.shape == (64,)
    again = kb.search(vector=food[0].vector, top_k=1)
    assert again[0].id == food[0].id
    assert kb.search("apple", top_k=3, min_score=2.0) == []
    batch = kb.search_batch(["a big red apple", "the fast vector search server"], top_k=1)
    assert [b[0].id for b in batch] == ["apple", "server"]
    vectors = client.embed(["green banana and cherry"] * 300, model="tiny")
    by_vector = kb.search_batch(vectors=vectors, top_k=2)  # 300 queries: more than one search takes
    assert len(by_vector) == 300 and all(b[0].id == "banana" for b in by_vector)
    keyword = kb.search("cherry apple", mode="keyword", explain=True)
    assert {h.id for h in keyword} == {"apple", "banana"} and keyword[0].explain["dense"] is None
    hybrid = kb.search("green banana and cherry", mode="hybrid", top_k=2, explain=True,
                       fusion={"method": "weighted", "alpha": 0.5})
    assert hybrid[0].id == "banana" and hybrid[0].explain["keyword"]["rank"] == 1
    by_words = kb.search_batch(["cherry", "server"], mode="keyword", top_k=1)
    assert [b[0].id for b in by_words] == ["banana", "server"]
    with pytest.raises(embedsearch.BadRequestError) as no_keyword:
        kb.search(vector=vectors[0], mode="keyword")
    assert no_keyword.value.param == "keyword"
    with pytest.raises(ValueError):
        kb.search("x", vector=[1.0])
    with pytest.raises(embedsearch.BadRequestError) as bad:
        kb.search("x", top_k=0)
    assert bad.value.param == "top_k"
    with pytest.raises(embedsearch.BadRequestError) as bad_filter:
        kb.search("x", filter={"topic": {"$gt": []}})
    assert bad_filter.value.param == "filter"


def test_keys_health_ready_metrics_and_the_auth_errors(client: Client, live: ServerProcess):
    made = client.create_key("acme")
    assert made.key and made.key.startswith("es-") and made.tenant == "acme" and not made.admin
    assert made.id in [k.id for k in client.list_keys()]
    with Client(live.url, made.key) as tenant:
        assert tenant.list_collections() == [] or all(c.name for c in tenant.list_collections())
        with pytest.raises(embedsearch.PermissionDeniedError) as denied:
            tenant.create_key("other")
        assert denied.value.status_code == 403 and set(denied.value.error) == OPENAI_ERROR_KEYS
    client.revoke_key(made.id)
    with Client(live.url, made.key) as revoked, pytest.raises(embedsearch.AuthenticationError) as unknown:
        revoked.list_collections()
    assert unknown.value.status_code == 401 and unknown.value.type == "invalid_request_error"
    assert client.health()["status"] == "ready"
    assert client.ready()["status"] == "ready"
    assert "embedsearch_" in client.metrics()


def test_connection_errors_and_timeouts():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", "k", max_retries=1) as nowhere:
        with pytest.raises(embedsearch.APIConnectionError):
            nowhere.list_models()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with Client(f"http://127.0.0.1:{silent.getsockname()[1]}", "k", timeout=0.3) as mute:
            with pytest.raises(embedsearch.APITimeoutError):
                mute.list_models()


def test_error_classes_by_status():
    for status, kind in [(400, embedsearch.BadRequestError), (401, embedsearch.AuthenticationError),
                         (403, embedsearch.PermissionDeniedError), (404, embedsearch.NotFoundError),
                         (409, embedsearch.ConflictError), (413, embedsearch.RequestTooLargeError),
                         (429, embedsearch.RateLimitError), (500, embedsearch.InternalServerError),
                         (503, embedsearch.ServiceUnavailableError), (405, embedsearch.APIStatusError)]:
        body = {"error": {"message": "m", "type": "t", "param": None, "code": "c"}}
        exc = embedsearch.errors.from_response(httpx.Response(status, json=body))
        assert type(exc) is kind and exc.error == body["error"] and exc.status_code == status
    proxy = embedsearch.errors.from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(proxy, embedsearch.InternalServerError) and "bad gateway" in proxy.message
    assert _api.retry_after("3") == 3 and _api.retry_after("1000") == _api.MAX_RETRY_AFTER
    assert _api.retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0 and _api.retry_after("soon") is None


def test_a_503_is_retried_until_the_engine_is_back(live: ServerProcess, name: str):
    """The engine process is killed: its worker answers 503 engine_unavailable (Retry-After) until the
    supervisor has started a new one; the client waits that out."""
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]}, timeout=30)
    with Client(live.url, API_KEY, max_retries=30, http_client=http) as client:
        kb = client.create_collection(name, dimension=2)
        kb.upsert([{"id": "a", "vector": [1.0, 0.0]}])
        (engine,) = role(live.proc.pid, "engine")
        os.kill(engine, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{engine}").exists() or "zombie" in Path(f"/proc/{engine}/status").read_text(),
                 what="the engine gone")
        statuses.clear()
        assert kb.search(vector=[1.0, 0.1], top_k=1)[0].id == "a"
        assert 503 in statuses and statuses[-1] == 200, statuses
        with Client(live.url, API_KEY, max_retries=0) as impatient:
            def search_once() -> bool:
                impatient.collection(name).search(vector=[1.0, 0.0])
                return False  # answered: the worker has not seen the engine go yet

            os.kill(role(live.proc.pid, "engine")[0], signal.SIGKILL)
            with pytest.raises(embedsearch.ServiceUnavailableError) as down:  # with no retries, the 503 itself
                wait_for(search_once, timeout=10, what="a 503")
            assert down.value.code in ("engine_unavailable", "model_loading", "collection_unavailable")
    http.close()
    wait_for(lambda: ready(live.url), what="ready again")


def test_a_429_is_retried_as_retry_after_says(throttled: ServerProcess):
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    with Client(throttled.url, API_KEY, http_client=http) as client:
        for _ in range(6):
            assert client.get_model("tiny").id == "tiny"
    assert statuses.count(200) == 6 and 429 in statuses
    with Client(throttled.url, API_KEY, max_retries=0) as impatient, pytest.raises(embedsearch.RateLimitError) as limited:
        for _ in range(5):
            impatient.get_model("tiny")
    assert limited.value.response.headers["retry-after"] and limited.value.type == "rate_limit_error"
    http.close()
