"""Bearer-key authentication for every route not marked ``exclude_from_auth``."""

from __future__ import annotations

import asyncio
import secrets
import time

from litestar.connection import ASGIConnection
from litestar.middleware.authentication import AbstractAuthenticationMiddleware, AuthenticationResult

from service.errors import AuthenticationError
from service.store.keys import ADMIN_TENANT, KeyStore, Principal


class Authenticator:
    """Checks keys against EMBEDSEARCH_API_KEY (admin) and the hashed keys in the database.

    Valid keys are remembered for a few seconds so a busy client costs one query per key, not per
    request; keys made by ``python -m service keys create`` while the server runs work at once.
    """

    def __init__(self, keys: KeyStore, admin_key: str = "", cache_seconds: float = 10.0) -> None:
        self.keys = keys
        self.admin_key = admin_key
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def verify(self, key: str) -> Principal:
        if self.admin_key and secrets.compare_digest(key.encode("utf-8", "surrogatepass"), self.admin_key.encode()):
            return Principal(tenant=ADMIN_TENANT, admin=True, key_id=None)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await asyncio.to_thread(self.keys.lookup, key)
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (principal, now + self.cache_seconds)
        return principal


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        scheme, _, key = connection.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError(
                "You didn't provide an API key. Send it in an Authorization header: `Authorization: Bearer YOUR_KEY`."
            )
        authenticator: Authenticator = connection.app.state.authenticator
        principal = await authenticator.verify(key)
        return AuthenticationResult(user=principal, auth=principal.key_id)
