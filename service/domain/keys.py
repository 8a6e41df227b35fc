"""API keys: who a key is, and what an admin key may do with the others.

A key is checked against EMBEDSEARCH_API_KEY (an admin key) and the hashed keys in the database. Valid
keys are remembered for a few seconds, so a busy client costs one query per key, not per request;
keys made by ``python -m service keys create`` while the server runs work at once, and a revoked one
stops working within ``cache_seconds`` (at once in the process that revoked it). Admin keys (tenant
``admin``) may issue, list and revoke tenant keys; tenant keys may not.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from service.errors import Forbidden, InvalidRequest, NotFound, Unauthenticated
from service.store.keys import ADMIN_TENANT, KeyRecord, KeyStore, Principal, ReservedTenant

MAX_CACHED = 10_000
MAX_TENANT_LENGTH = 64


class Keys:
    def __init__(self, store: KeyStore, admin_key: str = "", cache_seconds: float = 10.0) -> None:
        self.store = store
        self.admin_key = admin_key
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._admin = Principal(tenant=ADMIN_TENANT, admin=True, key_id=None)

    def cached(self, key: str) -> Principal | None:
        """Who ``key`` is, if that is known without the database (the admin key, or a key seen lately)."""
        if self.admin_key and secrets.compare_digest(key.encode("utf-8", "surrogatepass"), self.admin_key.encode()):
            return self._admin
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    async def verify(self, key: str) -> Principal:
        principal = self.cached(key)
        if principal is not None:
            return principal
        now = time.monotonic()
        principal = await asyncio.to_thread(self.store.lookup, key)
        if principal is None:
            raise Unauthenticated("Incorrect API key provided.")
        if len(self._cache) > MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (principal, now + self.cache_seconds)
        return principal

    async def issue(self, principal: Principal, tenant: str) -> tuple[str, KeyRecord]:
        """A new tenant key (shown this once) and its record."""
        _admin_only(principal)
        if not 1 <= len(tenant) <= MAX_TENANT_LENGTH or "\x00" in tenant:
            raise InvalidRequest(f"tenant must be 1 to {MAX_TENANT_LENGTH} characters, without NUL.", param="tenant")
        try:
            return await asyncio.to_thread(self.store.issue, tenant)
        except ReservedTenant as exc:
            raise InvalidRequest(f"{exc}.", param="tenant") from None

    async def records(self, principal: Principal) -> list[KeyRecord]:
        _admin_only(principal)
        return await asyncio.to_thread(self.store.records)

    async def revoke(self, principal: Principal, key_id: int) -> None:
        _admin_only(principal)
        if not await asyncio.to_thread(self.store.revoke, key_id):
            raise NotFound(f"No API key with id {key_id}.", param="id", code="key_not_found")
        for key, (cached, _) in list(self._cache.items()):
            if cached.key_id == key_id:
                del self._cache[key]


def _admin_only(principal: Principal) -> None:
    if not principal.admin:
        raise Forbidden("Only an admin key may manage API keys.")
