"""API keys, for admin keys only: issue a tenant key, list keys, revoke one."""

from __future__ import annotations

from litestar import Controller, Request, delete, get, post

from service.api.responses import errors
from service.api.schemas import ApiKey, ApiKeyList, DeletedKey, KeyCreate
from service.api.state import caller, services
from service.store.keys import KeyRecord


def _key(record: KeyRecord, key: str | None = None) -> ApiKey:
    return ApiKey(id=record.id, tenant=record.tenant, prefix=record.prefix, admin=record.admin,
                  created_at=int(record.created_at.timestamp()), key=key)


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["keys"]

    @post("/", status_code=201, summary="Issue a key for a tenant (admin keys only; the key is shown once)",
          responses=errors(403, 413))
    async def issue(self, data: KeyCreate, request: Request) -> ApiKey:
        key, record = await services(request).authenticator.issue(caller(request), data.tenant)
        return _key(record, key)

    @get("/", summary="List the keys (admin keys only; never the keys themselves)", responses=errors(403))
    async def list_keys(self, request: Request) -> ApiKeyList:
        records = await services(request).authenticator.records(caller(request))
        return ApiKeyList(data=[_key(record) for record in records])

    @delete("/{key_id:int}", status_code=200, summary="Revoke a key (admin keys only)", responses=errors(403, 404))
    async def revoke(self, key_id: int, request: Request) -> DeletedKey:
        await services(request).authenticator.revoke(caller(request), key_id)
        return DeletedKey(id=key_id)
