"""API keys, for admin keys only: issue a tenant key, list keys, revoke one."""

from __future__ import annotations

from litestar import Controller, delete, get, post

from service.api.responses import errors
from service.api.schemas import ApiKey, ApiKeyList, Deleted, KeyCreate
from service.domain.keys import Keys
from service.store.keys import KeyRecord, Principal


def _key(record: KeyRecord, key: str | None = None) -> ApiKey:
    return ApiKey(id=record.id, tenant=record.tenant, prefix=record.prefix, admin=record.admin,
                  created_at=int(record.created_at.timestamp()), key=key)


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["keys"]

    @post("/", status_code=201, summary="Issue a key for a tenant (admin keys only; the key is shown once)",
          responses=errors(403, 413))
    async def issue(self, data: KeyCreate, keys: Keys, principal: Principal) -> ApiKey:
        key, record = await keys.issue(principal, data.tenant)
        return _key(record, key)

    @get("/", summary="List the keys (admin keys only; never the keys themselves)", responses=errors(403))
    async def list_keys(self, keys: Keys, principal: Principal) -> ApiKeyList:
        return ApiKeyList(data=[_key(record) for record in await keys.records(principal)])

    @delete("/{key_id:int}", status_code=200, summary="Revoke a key (admin keys only)", responses=errors(403, 404))
    async def revoke(self, key_id: int, keys: Keys, principal: Principal) -> Deleted:
        await keys.revoke(principal, key_id)
        return Deleted(id=str(key_id), object="api_key")
