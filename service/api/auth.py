"""Bearer-key authentication for every route but those marked ``exclude_from_auth`` and the docs.

A Litestar middleware, so it runs after routing (it reads the route's opt-out) and before guards such
as the rate limit. Keys are checked by service/domain/keys.py; a key seen in the last seconds is
answered from its cache without a hop to the database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.errors import Unauthenticated

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from service.domain.keys import Keys

NO_KEY = ("You didn't provide an API key. Send it in an Authorization header: `Authorization: Bearer YOUR_KEY`.")


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            key = key.strip()
            if scheme.lower() == "bearer" and key:
                return key
            break
    raise Unauthenticated(NO_KEY)


class BearerAuth:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        opted_out = scope["route_handler"].opt.get("exclude_from_auth") or scope["path"].startswith("/docs")
        if scope["type"] == "http" and not opted_out:
            keys: Keys = scope["app"].state.authenticator
            key = _bearer(scope)
            scope["user"] = keys.cached(key) or await keys.verify(key)
        await self.app(scope, receive, send)
