"""Stop a request's handler when its client goes away: no work for answers nobody will read.

A client that gives up (a timeout, a closed connection) leaves behind a handler that may be queued for
the encoder; without this its inputs would still be embedded, ahead of requests whose clients wait.
Once the handler has read the whole body, the only message ``receive()`` can still bring is
``http.disconnect`` (uvicorn sends it when the connection drops, or when the response is complete): a
watcher task waits for it and cancels the handler, as TEI drops the queued requests of clients that
disconnected. The cancellation reaches whatever the handler awaits; the batcher then takes the
request's queued inputs off its queue, and a write that has begun commits all the same (its SQL runs
shielded, see ``CollectionsService._write``).

Only the waiting is cut short: once a response has started it is left alone (it is about to end,
and a streaming response watches for the disconnect itself, through the same ``receive``). Writes
shield their commit and the bookkeeping after it (``service.domain.collections.to_the_end``), so a
cancellation never falls between the two. A request whose body the handler does not read is not
watched. The watcher ends with the request.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

# What the access log and the HTTP metrics record for a request whose client went away (nginx's code);
# the server drops the response itself, its connection being closed.
CLIENT_CLOSED_REQUEST = 499


class CancelOnDisconnect:
    """ASGI middleware: a POST request whose client disconnects has its task cancelled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":  # only requests with a body do long work
            await self.app(scope, receive, send)
            return
        await _Request(receive, send).run(self.app, scope)


class _Request:
    """One request's connection to the server, seen through the watch for a disconnect."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._handler: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[Message] | None = None  # the receive() after the body's last part
        self._responding = False
        self._gone = False  # the handler was cancelled because the client disconnected

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        self._handler = asyncio.current_task()  # the server's task for this request: a disconnect cancels it
        try:
            await app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self._gone or self._handler.uncancel():  # a cancellation of the server's own, as well
                raise
            with contextlib.suppress(OSError):  # the server may refuse to send on a closed connection
                await self._send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
                await self._send({"type": "http.response.body", "body": b""})
        finally:
            if self._watcher is not None:
                self._watcher.cancel()  # it ends at the loop's next turn

    async def receive(self) -> Message:
        if self._watcher is not None:  # the body is in: only the watcher reads from the server now
            return await asyncio.shield(self._watcher)
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self._watcher = asyncio.ensure_future(self._receive())
            self._watcher.add_done_callback(self._received)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._responding = True
        await self._send(message)

    def _received(self, watcher: asyncio.Task[Message]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        handler = self._handler
        if watcher.result()["type"] == "http.disconnect" and not self._responding and handler and not handler.done():
            self._gone = True
            handler.cancel()
