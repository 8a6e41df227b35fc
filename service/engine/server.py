"""The engine process: one :class:`~service.engine.engine.Engine` serving the HTTP workers over a Unix socket.

It owns the models (and their batchers: every worker's inputs share one queue, so batches fill from
all of them), the indexes and their snapshots; the workers own HTTP, the wire format, tokenising and
SQL reads and writes. Each call from a worker runs as a task of its own, so a slow one (a forward
pass, a rebuild) holds up nothing else; its answer goes back on the worker's connection. A worker's
:class:`~service.engine.protocol.Cancel`, or its connection closing, cancels its calls: an embedding
still queued leaves the batcher's queue and never reaches a forward pass.

Only the server's own workers get in (service/engine/protocol.py): a connection from another uid is
closed at once, and one whose first bytes are not the greeting with this start's secret (within
``GREETING_SECONDS``) is closed before any frame of it is decoded. Every call is then checked against the
documented limits (checks.py) before it is run.

Started by service/supervisor.py (``python -m service engine``), which it tells once it is ready (it
listens, every index is open, every model has loaded or failed to); SIGTERM stops it once the workers
have drained and gone (40 s at most): the batchers stop, and every index is snapshotted.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from service.engine import protocol as p
from service.engine.checks import check_call
from service.engine.engine import Engine
from service.store.filters import parse_filter

log = logging.getLogger("service.engine")

WORKERS_DRAIN_SECONDS = 40.0  # a worker's graceful shutdown (30 s) and some
GREETING_SECONDS = 5.0  # for a new connection's greeting and secret


class EngineServer:
    def __init__(self, engine: Engine, tokenizer_dir: Path, secret: bytes) -> None:
        self.engine = engine
        self.secret = secret
        self.tokenizer_dir = tokenizer_dir
        self._tokenizers: dict[str, asyncio.Task[str]] = {}  # model -> the path of its tokenizer.json
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # The connections of HTTP workers: whether the worker said (in its last Status) it has every model ready.
        self._workers: dict[asyncio.Task[None], bool] = {}

    async def start(self, address: str) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=p.listening_socket(address), limit=p.MAX_FRAME)

    @property
    def workers(self) -> int:
        """HTTP workers connected now (ready or not)."""
        return len(self._workers)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection: asyncio.Task[None] = asyncio.current_task()  # type: ignore[assignment]
        self._connections.add(connection)
        calls: dict[int, asyncio.Task[None]] = {}
        try:
            if not await self._admitted(reader, writer):
                return
            while True:
                try:
                    call = p.call_decoder.decode(await p.read_frame(reader, p.MAX_CALL_FRAME))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request = call.request
                if isinstance(request, p.Cancel):
                    task = calls.get(request.call)
                    if task is not None:
                        task.cancel()
                elif isinstance(request, p.Hello):
                    self._workers[connection] = False
                    log.debug("HTTP worker (pid %d) connected; %d now", request.pid, self.workers)
                else:
                    if isinstance(request, p.Status) and connection in self._workers:
                        self._workers[connection] = request.ready
                    task = asyncio.get_running_loop().create_task(self._answer(call, writer))
                    calls[call.id] = task
                    task.add_done_callback(lambda _, id=call.id: calls.pop(id, None))
        except (ValueError, msgspec.DecodeError):
            log.exception("a worker sent a frame that is not a call; closing its connection")
        finally:
            self._workers.pop(connection, None)
            for task in list(calls.values()):
                task.cancel()
            writer.close()
            self._connections.discard(connection)

    async def _admitted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Whether the peer is one of this server's workers: the engine's own uid, then the greeting and secret."""
        uid = p.peer_uid(writer.get_extra_info("socket"))
        if uid is not None and uid != os.getuid():
            log.warning("refused an engine connection from uid %d (the engine's workers run as uid %d)", uid,
                        os.getuid())
            return False
        expected = p.GREETING + self.secret
        try:
            async with asyncio.timeout(GREETING_SECONDS):
                greeting = await reader.readexactly(len(expected))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            greeting = b""
        if not hmac.compare_digest(greeting, expected):
            log.warning("refused an engine connection that did not open with this start's secret")
            return False
        return True

    async def _answer(self, call: p.Call, writer: asyncio.StreamWriter) -> None:
        try:
            check_call(self.engine, call.request)
            reply = p.Reply(call.id, await self._handle(call.request))
        except asyncio.CancelledError:
            return  # the worker gave up on it: nobody to answer
        except Exception as exc:
            error = p.error_of(exc)
            if error.kind == "Internal":
                log.error("engine call %s failed", type(call.request).__name__, exc_info=exc)
            reply = p.Reply(call.id, error=error)
        if not writer.is_closing():
            writer.write(p.frame(reply))

    async def _handle(self, request: p.Request) -> object:
        engine = self.engine
        match request:
            case p.Embed(model, sequences, key):
                return p.Array.of(await engine.embed(model, sequences, key=key))
            case p.Search(collection, queries, k, filter):  # checked: check_call
                parsed = parse_filter(filter) if filter is not None else None
                scores, seqs = await asyncio.to_thread(engine.search, collection, queries.numpy(), k, parsed, filter)
                return [p.Array.of(scores), p.Array.of(seqs)]
            case p.KeywordSearch(collection, queries, k, filter):
                parsed = parse_filter(filter) if filter is not None else None
                scores, seqs = await asyncio.to_thread(engine.keyword_search, collection, queries, k, parsed, filter)
                return [p.Array.of(scores), p.Array.of(seqs)]
            case p.Apply(collection, _):
                return await asyncio.to_thread(engine.apply, collection, None)  # what SQL committed
            case p.Open(collection):
                return await engine.open_index(collection)
            case p.Create(collection):
                return await engine.create_index(collection)
            case p.Drop(collection):
                return await engine.drop_index(collection)
            case p.State(collection):
                return await engine.index_state(collection)
            case p.Indexed(collection):
                return await asyncio.to_thread(engine.indexed, collection)
            case p.Status():
                return await self._status()
        raise ValueError(f"unknown request {type(request).__name__}")

    async def _status(self) -> p.EngineStatus:
        status = await self.engine.status()
        status.workers = sum(self._workers.values())
        for name, state in status.models.items():
            if state.status == "ready":
                state.tokenizer = await self._tokenizer(name)
        return status

    def _tokenizer(self, name: str) -> asyncio.Task[str]:
        """The path of ``name``'s tokenizer.json for the workers, written once per engine start."""
        task = self._tokenizers.get(name)
        if task is None:
            backend = self.engine.served_models()[name].tokenizer.backend
            path = self.tokenizer_dir / f"{name.replace(':', '-').replace('/', '-')}.tokenizer.json"
            task = self._tokenizers[name] = asyncio.get_running_loop().create_task(
                asyncio.to_thread(_write_atomically, path, backend.to_str()))
        return task


def _write_atomically(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(staging, path)
    return str(path)


async def serve(engine: Engine, address: str, tokenizer_dir: Path, secret: bytes,
                ready: Callable[[], None] = lambda: None) -> None:
    """Start the engine, answer the workers (those with ``secret``) on ``address`` until SIGTERM (or SIGINT),
    then stop it. Once it listens, every index is open and every model has loaded (or failed to): one INFO line
    saying what it serves, then ``ready()`` (the supervisor's signal). An engine that cannot start ends in one
    ``error:`` line (SystemExit; the traceback at DEBUG)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = EngineServer(engine, tokenizer_dir, secret)
    try:
        await engine.start()
        await server.start(address)
    except Exception as exc:
        log.debug("the engine could not start", exc_info=True)
        raise SystemExit(f"error: the engine could not start: {type(exc).__name__}: {exc}") from None
    loading = loop.create_task(engine.models.wait_ready())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and not stopping.done():
        log.info("engine ready (pid %d): %s", os.getpid(), serving(engine))
        ready()
    await stopping
    loading.cancel()
    # SIGTERM may reach every process at once (a service manager stopping the whole group): the workers
    # still draining may need the engine, so it waits for them to go first.
    deadline = time.monotonic() + WORKERS_DRAIN_SECONDS
    while server.workers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    log.info("engine stopping: snapshotting every index")
    await server.close()
    await engine.stop()


def serving(engine: Engine) -> str:
    """What a started engine serves, in a few words: its models (each one's dimension, or that it failed to load),
    where they run, and how many collections' indexes it holds."""
    hub = engine.models
    models = ", ".join(f"{name} ({f'dimension {m.dimension}' if m.status == 'ready' else 'failed to load'})"
                       for name, m in hub.models.items())
    indexes = len(engine.indexes.collection_ids())
    return (f"model{'s' if len(hub.models) != 1 else ''} {models} on {hub.device} "
            f"({str(hub.dtype).removeprefix('torch.')}); {indexes} collection index{'es' if indexes != 1 else ''}")
