"""One ASGI wrapper around the whole app: request ids, the access log and the HTTP metrics.

It wraps Litestar's ``asgi_handler`` (the router inside its exception handler), not a route, so it
sees every response: 404s for unknown paths, 401s from authentication and 429s from rate limiting
included. Litestar's router writes the matched route's template into ``scope["path_template"]``,
which becomes the ``route`` label once the response is under way.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from service.observability.logging import request_id, sanitise_request_id
from service.observability.metrics import UNMATCHED_ROUTE, Metrics

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("service.access")

REQUEST_ID_HEADER = b"x-request-id"
# Probes and scrapes are logged at DEBUG so that they do not drown the access log.
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]  # before routing, which may rewrite it
        raw = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), None)
        rid = sanitise_request_id(raw.decode("latin-1") if raw is not None else None)
        header = (REQUEST_ID_HEADER, rid.encode("ascii"))
        scope.setdefault("state", {})["request_id"] = rid  # request.state.request_id for handlers
        token = request_id.set(rid)
        status = 500  # if the app fails before it starts a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}  # type: ignore[typeddict-item]
            await send(message)

        metrics = self.metrics
        metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.in_flight -= 1
            seconds = time.perf_counter() - started
            route = scope.get("path_template") or UNMATCHED_ROUTE
            method = scope["method"]
            metrics.observe_request(method, route, status, seconds)
            level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
            if access_log.isEnabledFor(level):
                duration_ms = round(seconds * 1000, 2)
                access_log.log(
                    level, "%s %s %d %.1f ms", method, path, status, duration_ms,
                    extra={"request_id": rid, "method": method, "path": path, "route": route, "status": status,
                           "duration_ms": duration_ms},
                )
            request_id.reset(token)


def instrument(app: Litestar, metrics: Metrics) -> Litestar:
    """Put ``metrics`` in the app's state (for ``/metrics``) and the observer around its handler."""
    app.state.metrics = metrics
    app.asgi_handler = RequestObserver(app.asgi_handler, metrics)
    return app
