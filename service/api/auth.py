"""Bearer-key authentication for every route not marked ``exclude_from_auth`` (keys: service/domain/keys.py)."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.middleware.authentication import AbstractAuthenticationMiddleware, AuthenticationResult

from service.domain.keys import Keys
from service.errors import Unauthenticated


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        scheme, _, key = connection.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated(
                "You didn't provide an API key. Send it in an Authorization header: `Authorization: Bearer YOUR_KEY`."
            )
        keys: Keys = connection.app.state.authenticator
        principal = await keys.verify(key)
        return AuthenticationResult(user=principal, auth=principal.key_id)
