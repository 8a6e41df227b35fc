"""Hostile input over HTTP: Unicode edge cases (on SQLite and PostgreSQL), JSON nesting depth, CORS,
and what an internal error shows a client.

The rule for every string a client sends (ids, texts, metadata keys and values, filters, queries,
embeddings input): it either round-trips exactly (written, then read back equal, code point for
code point: no normalisation) or is refused with a 400 in the OpenAI error shape whose message
names the field. Never a 500. PostgreSQL cannot store NUL in text or jsonb, and no database can
store an unpaired UTF-16 surrogate as UTF-8, so those are refused on both backends alike.
"""

from __future__ import annotations

import json
import sqlite3
import time
from urllib.parse import quote

import pytest

from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}

# Strings that must come back exactly as sent (keys are only labels).
SAMPLES = {
    "emoji": "😀 👍🏽 👨‍👩‍👧‍👦 🇺🇦 🏳️‍🌈",
    "rtl": "שלום עולם — مرحبا بالعالم",
    "bidi-controls": "\u202eevil\u202c \u2067x\u2069 \u200f\u200e",
    "combining": "e\u0301 a\u0308\u0323 Z\u0351\u0361\u0489 \u1100\u1161\u11a8",
    "precomposed": "\u00e9",  # must stay distinct from the decomposed form below
    "decomposed": "e\u0301",
    "astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd \U0001f9ec \U000e0001",
    "zero-width": "a\u200bb\u200c\u200d\ufeffc\u2060",
    "controls": "\x01\x07\x1b[31m\x7f\u0085\u2028\u2029\t\r\n",
    "cjk": "日本語 한국어 中文 ｆｕｌｌｗｉｄｔｈ",
    "sql-and-json-syntax": "'; DROP TABLE documents; -- \" \\ % _ * ? $.a[0] {}",
    "noncharacters": "\ufdd0\ufffe\uffff\U0001fffe\U0010ffff",
    "long-id": "😀" * 256,  # MAX_ID_LENGTH code points (1 KiB of UTF-8)
}
LONG_TEXT = "ünïcödé 😀 שלום " * 40_000  # ~640k code points


async def post_raw(client, path: str, body: bytes):
    return await client.post(path, content=body, headers=JSON)


def doc_path(collection: str, doc_id: str) -> str:
    return f"/v1/collections/{collection}/documents/{quote(doc_id, safe='')}"


# -- Unicode: round trips ----------------------------------------------------------------------


async def test_unicode_ids_texts_and_metadata_round_trip_exactly(db_client):
    client = db_client
    assert (await client.post("/v1/collections", json={"name": "u", "dimension": 4})).status_code == 201
    docs = []
    for i, (label, value) in enumerate(SAMPLES.items()):
        docs.append({
            "id": value,
            "text": value if label != "long-id" else LONG_TEXT,
            "vector": [1.0, float(i), 0.5, -1.0],
            "metadata": {"label": label, "s": value, value[:200]: {"nested": [value, {value[:50]: value}]}},
        })
    response = await client.post("/v1/collections/u/documents", json={"documents": docs})
    assert response.status_code == 200, response.text
    assert response.json()["ids"] == [d["id"] for d in docs]

    for doc in docs:  # read back one by one: equal, code point for code point
        got = await client.get(doc_path("u", doc["id"]))
        assert got.status_code == 200, (doc["metadata"]["label"], got.text[:300])
        assert got.json() == {"id": doc["id"], "text": doc["text"], "metadata": doc["metadata"]}

    seen, cursor = [], None  # paging by id visits every document exactly once
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/collections/u/documents", params=params)).json()
        seen += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(SAMPLES.values()) and len(seen) == len(set(seen))

    for label, value in SAMPLES.items():  # metadata filters compare the exact strings
        hits = (await client.post("/v1/collections/u/search", json={
            "vector": [1, 1, 1, 1], "top_k": 100, "filter": {"s": value}, "include": ["metadata"],
        })).json()["data"]
        assert [h["id"] for h in hits] == [value], label
        assert hits[0]["metadata"]["s"] == value
        listed = (await client.get("/v1/collections/u/documents", params={"filter": json.dumps({"s": value})})).json()
        assert [d["id"] for d in listed["data"]] == [value], label

    assert (await client.delete(doc_path("u", SAMPLES["decomposed"]))).status_code == 200
    assert (await client.get(doc_path("u", SAMPLES["precomposed"]))).status_code == 200  # not the same id
    deleted = await client.post("/v1/collections/u/documents/delete", json={"ids": [SAMPLES["emoji"], SAMPLES["rtl"]]})
    assert deleted.json() == {"deleted": 2}


async def test_unicode_texts_are_embedded_and_stored_on_a_text_collection(db_client):
    client = db_client
    assert (await client.post("/v1/collections", json={"name": "t", "model": "tiny"})).status_code == 201
    docs = [{"id": label, "text": value} for label, value in SAMPLES.items() if label != "long-id"]
    response = await client.post("/v1/collections/t/documents", json={"documents": docs})
    assert response.status_code == 200, response.text
    for doc in docs:
        assert (await client.get(doc_path("t", doc["id"]))).json()["text"] == doc["text"]
    hits = await client.post("/v1/collections/t/search", json={"queries": list(SAMPLES.values())[:5], "top_k": 2})
    assert hits.status_code == 200, hits.text


# -- Unicode: refusals -------------------------------------------------------------------------

BAD_DOCUMENTS = [  # (raw JSON of one document, words the message must contain)
    (rb'{"id": "a\u0000b", "vector": [1, 0, 0, 0]}', "documents[0].id contains a NUL"),
    (rb'{"id": "a", "text": "x\u0000", "vector": [1, 0, 0, 0]}', "documents[0].text contains a NUL"),
    (rb'{"id": "a", "vector": [1, 0, 0, 0], "metadata": {"k\u0000": 1}}', "documents[0].metadata contains a NUL"),
    (rb'{"id": "a", "vector": [1, 0, 0, 0], "metadata": {"k": ["\u0000"]}}', "documents[0].metadata contains a NUL"),
    (rb'{"id": "\ud800", "vector": [1, 0, 0, 0]}', "documents[0].id contains an unpaired UTF-16 surrogate"),
    (rb'{"id": "a", "text": "x\udc00y", "vector": [1, 0, 0, 0]}', "documents[0].text contains an unpaired"),
    (rb'{"id": "a", "text": "\ude00\ud83d", "vector": [1, 0, 0, 0]}', "documents[0].text contains an unpaired"),
    (rb'{"id": "a", "vector": [1, 0, 0, 0], "metadata": {"\ud83d": 1}}', "a key of documents[0].metadata"),
    (rb'{"id": "a", "vector": [1, 0, 0, 0], "metadata": {"k": {"j": ["\udfff"]}}}',
     "documents[0].metadata.k.j[0] contains an unpaired"),
]


@pytest.mark.parametrize(("raw", "words"), BAD_DOCUMENTS)
async def test_nul_and_unpaired_surrogates_in_documents_are_a_400_naming_the_field(db_client, raw, words):
    client = db_client
    assert (await client.post("/v1/collections", json={"name": "v", "dimension": 4})).status_code == 201
    good = b'{"id": "good", "vector": [1, 1, 1, 1]}'
    response = await post_raw(client, "/v1/collections/v/documents", b'{"documents": [' + raw + b", " + good + b"]}")
    error = assert_error(response, 400, param="documents")
    assert words in error["message"]
    assert (await client.get("/v1/collections/v")).json()["count"] == 0  # all or nothing


async def test_nul_and_surrogates_in_lookups_and_filters_are_a_400(db_client):
    client = db_client
    assert (await client.post("/v1/collections", json={"name": "v", "dimension": 2})).status_code == 201
    assert (await client.post("/v1/collections/v/documents", json={"documents": [
        {"id": "a", "vector": [1, 0], "metadata": {"k": "x"}}]})).status_code == 200
    assert_error(await client.get("/v1/collections/v/documents/a%00b"), 400, param="id")
    assert_error(await client.delete("/v1/collections/v/documents/a%00b"), 400, param="id")
    assert_error(await post_raw(client, "/v1/collections/v/documents/delete", rb'{"ids": ["a", "b\u0000"]}'),
                 400, param="ids")
    error = assert_error(await post_raw(client, "/v1/collections/v/documents/delete", rb'{"ids": ["\ud800"]}'),
                         400, param="ids")
    assert "ids[0]" in error["message"]
    nul_cursor = "YQA"  # base64url of "a\x00"
    assert_error(await client.get("/v1/collections/v/documents", params={"cursor": nul_cursor}), 400, param="cursor")
    for bad in ('{"k": "x\\u0000"}', '{"k": "\\ud800"}', '{"k\\u0000": 1}', '{"k": {"$in": ["\\udc00"]}}'):
        assert_error(await client.get("/v1/collections/v/documents", params={"filter": bad}), 400, param="filter")
        body = b'{"vector": [1, 0], "filter": ' + bad.encode() + b"}"
        assert_error(await post_raw(client, "/v1/collections/v/search", body), 400, param="filter")
    for bad_index in ("Flat\x00", "Flat" + " " * 200):  # stored in a 128-character column
        response = await client.post("/v1/collections", json={"name": "i", "dimension": 2, "index": bad_index})
        assert_error(response, 400, param="index")
    # nothing was harmed
    assert (await client.get("/v1/collections/v/documents/a")).json()["metadata"] == {"k": "x"}


async def test_embeddings_input_with_unicode_edge_cases(client):
    for label, value in SAMPLES.items():
        response = await client.post("/v1/embeddings", json={"model": "tiny", "input": value})
        assert response.status_code == 200, (label, response.text)
    batch = await client.post("/v1/embeddings", json={"model": "tiny", "input": list(SAMPLES.values())})
    assert len(batch.json()["data"]) == len(SAMPLES)
    # NUL is only a character to a tokenizer: embedded, never stored
    assert (await post_raw(client, "/v1/embeddings", rb'{"model": "tiny", "input": "a\u0000b"}')).status_code == 200
    # unpaired surrogates never reach the tokenizer
    for raw, where in ((rb'"\ud800"', "input contains"), (rb'["ok", "x\udfff"]', "input[1] contains"),
                       (rb'"\ude00\ud83d"', "input contains")):
        response = await post_raw(client, "/v1/embeddings", b'{"model": "tiny", "input": ' + raw + b"}")
        error = assert_error(response, 400, param="input", code="invalid_unicode")
        assert where in error["message"]
    # bytes that are not UTF-8 at all (a raw surrogate in CESU-8, Latin-1, a truncated sequence)
    for raw in (b'"\xed\xa0\x80"', b'"caf\xe9"', b'"\xf0\x9f\x98"'):
        response = await post_raw(client, "/v1/embeddings", b'{"model": "tiny", "input": ' + raw + b"}")
        assert_error(response, 400, code="invalid_encoding")
    # very long strings: refused by token count, or cut when asked
    long = "hello " * 100_000
    assert_error(await client.post("/v1/embeddings", json={"model": "tiny", "input": long}), 400,
                 param="input", code="context_length_exceeded")
    cut = await client.post("/v1/embeddings", json={"model": "tiny", "input": long, "truncate": True})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 64
    # search queries go through the same tokenizer
    assert (await client.post("/v1/collections", json={"name": "t", "model": "tiny"})).status_code == 201
    assert (await client.post("/v1/collections/t/search", json={"query": SAMPLES["emoji"]})).status_code == 200
    error = assert_error(await post_raw(client, "/v1/collections/t/search", rb'{"queries": ["a", "\udbff"]}'),
                         400, param="queries")
    assert "queries[1]" in error["message"]


# -- JSON nesting depth ------------------------------------------------------------------------


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


@pytest.mark.parametrize("route", [
    "/v1/embeddings", "/v1/collections", "/v1/collections/v/documents", "/v1/collections/v/documents/delete",
    "/v1/collections/v/search",
])
async def test_deeply_nested_json_is_a_400_before_decoding(client, route):
    assert (await client.post("/v1/collections", json={"name": "v", "dimension": 2})).status_code == 201
    from service.api.limits import MAX_JSON_DEPTH

    for depth in (MAX_JSON_DEPTH + 1, 5_000, 1_000_000):
        body = b'{"input": ' + nested(depth - 1) + b', "documents": 1}'
        started = time.monotonic()
        response = await post_raw(client, route, body)
        error = assert_error(response, 400, code="json_too_deep")
        assert str(MAX_JSON_DEPTH) in error["message"]
        assert time.monotonic() - started < 5
    # brackets inside strings do not count
    text = "[ {" * 10_000
    response = await client.post("/v1/embeddings", json={"model": "tiny", "input": text})
    assert_error(response, 400, code="context_length_exceeded")


async def test_deep_filters_in_the_query_string_are_a_400(client):
    assert (await client.post("/v1/collections", json={"name": "v", "dimension": 2})).status_code == 201
    for depth in (101, 2_000):
        deep = '{"$not": ' * depth + "{}" + "}" * depth
        response = await client.get("/v1/collections/v/documents", params={"filter": deep})
        assert_error(response, 400, param="filter", code="json_too_deep")
        response = await client.get("/v1/collections/v/documents", params={"filter": "[" * depth + "]" * depth})
        assert_error(response, 400, param="filter")


async def test_the_deepest_legitimate_bodies_are_accepted(client):
    """The depth limit leaves room for the deepest filter and metadata the service itself accepts."""
    from service.store.filters import MAX_DEPTH

    assert (await client.post("/v1/collections", json={"name": "v", "dimension": 2})).status_code == 201
    metadata: dict = {"leaf": 1}
    for _ in range(31):  # 32 levels of objects, the metadata object included: the most allowed
        metadata = {"m": metadata}
    response = await client.post("/v1/collections/v/documents", json={"documents": [
        {"id": "a", "vector": [1, 0], "metadata": metadata}]})
    assert response.status_code == 200, response.text
    deeper = {"documents": [{"id": "b", "vector": [1, 0], "metadata": {"m": metadata}}]}
    assert "nested more than 32" in assert_error(await client.post("/v1/collections/v/documents", json=deeper),
                                                 400, param="documents")["message"]
    assert (await client.get("/v1/collections/v/documents/a")).json()["metadata"] == metadata

    flt: dict = {"leaf": {"$eq": 1}}
    for _ in range(MAX_DEPTH - 1):  # $and at every level: an object and a list per level
        flt = {"$and": [flt]}
    hits = await client.post("/v1/collections/v/search", json={"vector": [1, 0], "filter": flt})
    assert hits.status_code == 200, hits.text
    listed = await client.get("/v1/collections/v/documents", params={"filter": json.dumps(flt)})
    assert listed.status_code == 200, listed.text
    too_deep = {"$and": [flt]}
    error = assert_error(await client.post("/v1/collections/v/search", json={"vector": [1, 0], "filter": too_deep}),
                         400, param="filter")
    assert "nested too deeply" in error["message"]


# -- CORS and internal errors ------------------------------------------------------------------


async def test_cors_is_off_by_default(client):
    origin = {"Origin": "https://evil.example"}
    preflight = await client.options("/v1/embeddings", headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization",
    })
    assert preflight.status_code < 500
    for response in (
        preflight,
        await client.post("/v1/embeddings", json={"model": "tiny", "input": "hi"}, headers=origin),
        await client.get("/v1/models", headers=origin),
        await client.get("/health", headers=origin),
        await client.get("/v1/collections/nope", headers=origin),
    ):
        assert not any(h.lower().startswith("access-control-") for h in response.headers), dict(response.headers)


async def test_an_internal_error_is_a_generic_500_without_details(client, settings, caplog):
    """A real failure, not a mock: the documents table disappears behind the server's back."""
    assert (await client.post("/v1/collections", json={"name": "v", "dimension": 2})).status_code == 201
    db = sqlite3.connect(settings.data_dir / "embedsearch.db")
    try:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("ALTER TABLE documents RENAME TO documents_gone")
        db.commit()
    finally:
        db.close()
    with caplog.at_level("ERROR"):
        response = await client.get("/v1/collections/v/documents/x")
    assert response.status_code == 500
    assert response.json() == {"error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error", "param": None, "code": "internal_error",
    }}
    for leak in ("Traceback", ".py", "/", "sqlite", "documents", "no such table", "OperationalError"):
        assert leak not in response.text.replace("\\/", "")
    # ... while the server log has the details
    assert "no such table" in caplog.text
