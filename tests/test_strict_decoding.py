"""Unknown request fields are refused, never ignored: a misspelled "filtr" must not search everything."""

from __future__ import annotations

import pytest

from tests.test_collections_api import make, upsert
from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.integration

CASES = [
    ("/v1/embeddings", {"model": "tiny", "input": "hi", "encoding_fromat": "base64"}, "encoding_fromat"),
    ("/v1/collections", {"name": "x", "dimension": 2, "metrc": "l2"}, "metrc"),
    ("/v1/collections/c/search", {"vector": [1, 0], "filtr": {"owner": "bob"}}, "filtr"),
    ("/v1/collections/c/documents", {"documents": [{"id": "a", "vector": [1, 0], "metdata": {}}]}, "documents"),
    ("/v1/collections/c/documents/delete", {"ids": ["a"], "fliter": {}}, "fliter"),
    ("/v1/keys", {"tenant": "acme", "admin": True}, "admin"),
]


@pytest.mark.parametrize("path, body, param", CASES, ids=[c[2] for c in CASES])
async def test_an_unknown_field_is_a_400_naming_it(client, path, body, param):
    await make(client, "c", dimension=2)
    await upsert(client, "c", [{"id": "a", "vector": [1, 0], "metadata": {"owner": "alice"}}])
    response = await client.post(path, json=body)
    assert_error(response, 400, param=param, code="unknown_parameter")
    assert "Unrecognized request argument supplied" in response.json()["error"]["message"]
    # nothing happened: the document is still there and still alice's
    doc = (await client.get("/v1/collections/c/documents/a")).json()
    assert doc["metadata"] == {"owner": "alice"}


async def test_the_openapi_schema_says_request_bodies_take_no_other_fields(client):
    schemas = (await client.get("/docs/openapi.json")).json()["components"]["schemas"]
    for name in ("EmbeddingRequest", "CollectionCreate", "SearchRequest", "UpsertRequest", "DocumentIn",
                 "DeleteRequest", "KeyCreate"):
        assert schemas[name].get("additionalProperties") is False, name
