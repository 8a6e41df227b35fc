"""Vectors on the wire as base64 of little-endian float32, as the embeddings answer: the same as JSON
numbers, a quarter of the bytes; bad base64 is a 400 naming the field."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.test_collections_api import make, search, upsert
from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.integration


def b64(vector) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


async def test_binary_and_json_vectors_are_the_same(db_client):
    client = db_client
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    await make(client, "json", dimension=8)
    await make(client, "bin", dimension=8)
    await upsert(client, "json", [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(vectors)])
    await upsert(client, "bin", [{"id": str(i), "vector": b64(v)} for i, v in enumerate(vectors)])
    query = rng.standard_normal(8).astype(np.float32)
    as_json = await search(client, "json", vector=query.tolist(), include=["vector"])
    as_binary = await search(client, "bin", vector=b64(query), include=["vector"], encoding_format="base64")
    assert [h["id"] for h in as_json["data"]] == [h["id"] for h in as_binary["data"]]
    assert [h["score"] for h in as_json["data"]] == [h["score"] for h in as_binary["data"]]
    for a, b in zip(as_json["data"], as_binary["data"]):
        assert np.frombuffer(base64.b64decode(b["vector"]), "<f4").tolist() == a["vector"]
    batch = await search(client, "bin", vectors=[b64(query), query.tolist()])
    assert batch["data"][0] == batch["data"][1]
    got = await client.get("/v1/collections/bin/documents/3", params={"include": "vector",
                                                                      "encoding_format": "base64"})
    stored = np.frombuffer(base64.b64decode(got.json()["vector"]), "<f4")
    assert stored.tolist() == vectors[3].tolist()  # as sent: SQL keeps the vector itself


def both_alphabets() -> tuple[np.ndarray, str, str]:
    """A vector whose base64 holds both `+` and `/`, in the standard and the URL-safe alphabet."""
    vector = np.random.default_rng(0).standard_normal(8).astype("<f4")
    raw = vector.tobytes()
    standard, url_safe = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    assert {"+", "/"} <= set(standard) and {"-", "_"} <= set(url_safe)
    return vector, standard, url_safe


async def test_standard_and_url_safe_base64_decode_to_the_same_vector(client):
    vector, standard, url_safe = both_alphabets()
    await make(client, "alpha", dimension=8)
    await upsert(client, "alpha", [{"id": "std", "vector": standard}, {"id": "url", "vector": url_safe}])
    got = (await client.post("/v1/collections/alpha/documents/get",
                             json={"ids": ["std", "url"], "include": ["vector"]})).json()["data"]
    assert got[0]["vector"] == got[1]["vector"] == vector.tolist()
    by_standard = await search(client, "alpha", vector=standard)
    assert by_standard == await search(client, "alpha", vector=url_safe)
    assert by_standard == await search(client, "alpha", vector=vector.tolist())


_, _STANDARD, _URL_SAFE = both_alphabets()


@pytest.mark.parametrize("value, words", [
    ("not base64!", "not base64"),
    (_URL_SAFE.replace("-", "+", 1), "not base64"),  # the two alphabets mixed in one string
    (_URL_SAFE.rstrip("="), "not base64"),  # padding left out
    (base64.b64encode(b"\x00" * 6).decode(), "not a whole number of float32"),
    (b64([1.0] * 7), "has 7 values; this collection's dimension is 8"),
    (b64([float("nan")] + [1.0] * 7), "NaN or infinite"),
    (b64([0.0] * 8), "all zeros"),
])
async def test_bad_binary_vectors_are_a_400_naming_the_field(client, value, words):
    await make(client, "v", dimension=8)
    response = await client.post("/v1/collections/v/documents", json={"documents": [
        {"id": "ok", "vector": [1.0] * 8}, {"id": "bad", "vector": value}]})
    assert_error(response, 400, param="documents")
    assert "documents[1].vector" in response.json()["error"]["message"] and words in response.json()["error"]["message"]
    assert (await client.get("/v1/collections/v")).json()["count"] == 0  # all or nothing
    response = await client.post("/v1/collections/v/search", json={"vectors": [[1.0] * 8, value]})
    assert_error(response, 400, param="vectors")
    assert "vectors[1]" in response.json()["error"]["message"] and words in response.json()["error"]["message"]
