"""Document ids in paths, kept whole: an id may hold any character but NUL, "/" included.

Litestar routes on the *decoded* path and normalises it first: it drops a trailing slash and collapses
repeated ones. So ``DELETE .../documents/%2Flead`` reached the document ``lead``, ``a%2F%2Fb`` read
``a/b``, and ``t/`` or ``/`` could not be reached at all. This ASGI wrapper, around the router, takes
the id segment of ``/v1/collections/{name}/documents/{id}`` from the *raw* path (as the client
percent-encoded it), and hands routing that id as one segment with every reserved character
percent-encoded; the handlers decode it with :func:`document_id`. Nothing else is touched.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

# The collection name is [A-Za-z0-9_-]: its raw and decoded forms are the same.
_DOCUMENT_PATH = re.compile(r"^(/v1/collections/[^/]+/documents/)(.+)$", re.DOTALL)


def document_id(segment: str) -> str:
    """The id a routed path segment stands for (see the module docstring)."""
    return unquote(segment)


class WholeDocumentIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "/documents/" in scope["path"]:
            raw = scope.get("raw_path")
            # Some clients' transports put the query in raw_path; ASGI servers do not.
            target = raw.decode("latin-1").partition("?")[0] if raw else quote(scope["path"])
            match = _DOCUMENT_PATH.match(target)
            if match is not None and match.group(2) != "delete":  # POST .../documents/delete is a route
                scope["path"] = match.group(1) + quote(unquote(match.group(2)), safe="")
        await self.app(scope, receive, send)
