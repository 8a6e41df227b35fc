"""Admin keys mean something: only they may issue, list and revoke tenant keys (POST/GET/DELETE /v1/keys)."""

from __future__ import annotations

import pytest

from tests.test_collections_api import make
from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.integration


async def test_an_admin_key_issues_lists_and_revokes_tenant_keys(db_client):
    client = db_client
    issued = await client.post("/v1/keys", json={"tenant": "acme"})
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["tenant"] == "acme" and body["admin"] is False and body["key"].startswith(body["prefix"])
    acme = {"Authorization": f"Bearer {body['key']}"}
    await make(client, "admins", dimension=2)
    created = await client.post("/v1/collections", json={"name": "theirs", "dimension": 2}, headers=acme)
    assert created.status_code == 201
    names = [c["name"] for c in (await client.get("/v1/collections", headers=acme)).json()["data"]]
    assert names == ["theirs"]  # a tenant sees its own collections only
    listed = (await client.get("/v1/keys")).json()["data"]
    assert [(k["id"], k["tenant"]) for k in listed] == [(body["id"], "acme")] and "key" not in listed[0]
    for method, path, json in (("POST", "/v1/keys", {"tenant": "other"}), ("GET", "/v1/keys", None),
                               ("DELETE", f"/v1/keys/{body['id']}", None)):
        assert_error(await client.request(method, path, json=json, headers=acme), 403, code="permission_denied")
    revoked = await client.delete(f"/v1/keys/{body['id']}")
    assert revoked.status_code == 200
    assert revoked.json() == {"id": body["id"], "object": "api_key", "deleted": True}  # an integer, as listed
    assert_error(await client.get("/v1/collections", headers=acme), 401, code="invalid_api_key")
    assert_error(await client.delete(f"/v1/keys/{body['id']}"), 404, code="key_not_found")


@pytest.mark.parametrize("tenant", ["admin", "", "x" * 65, "a\u0000b"])
async def test_a_key_for_the_admin_tenant_or_a_bad_name_is_refused(client, tenant):
    assert_error(await client.post("/v1/keys", json={"tenant": tenant}), 400, param="tenant")


@pytest.mark.parametrize("key_id", ["99999999999999999999999", "-99999999999999999999999", str(2**63), "0", "-1"])
async def test_revoking_an_id_no_key_has_is_a_404_even_past_64_bits(db_client, key_id):
    assert_error(await db_client.delete(f"/v1/keys/{key_id}"), 404, param="id", code="key_not_found")


async def test_revoking_a_non_numeric_key_id_is_a_404(client):
    assert_error(await client.delete("/v1/keys/abc"), 404)
