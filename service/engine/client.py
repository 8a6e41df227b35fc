"""The engine as an HTTP worker sees it: :class:`~service.engine.engine.Engine`'s methods, each a call to the
engine process (service/engine/server.py) over one Unix socket, owned by the worker's event loop.

Calls are multiplexed on the connection by id, so any number are in flight at once. The synchronous
methods (``search``, ``apply``, ``indexed``: the domain calls them from worker threads) hand their call
to the event loop and wait for it there. Every call has a deadline (the engine's own, plus a margin);
a call whose caller is cancelled (its client went away) is cancelled in the engine too.

What the domain needs at once (the models' states, sizes and tokenizers, for validating and tokenising
here) comes from the engine's status, asked for on connecting and every few seconds (more often while
a model loads). A collection's index known to be ready is remembered until a call says it is gone.

If the engine process dies, every call in flight and every new one is a 503 ``engine_unavailable``
until the supervisor has started a new engine and this client has reconnected to it (it retries every
``RECONNECT_SECONDS``); the models count as loading meanwhile. A write committed to SQL whose Apply could
not reach the engine (down, or past the deadline) is still answered as done: the collection is kept
here as *behind*, and told to the engine again (it catches up from SQL) at once after reconnecting and
at every status refresh until the engine has taken it.

Each connection opens with the greeting and this start's secret (service/engine/protocol.py), then Hello.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from typing import Any, TypeVar

import msgspec
import numpy as np

from index import VectorIndex
from index.milvus import milvus_type
from service.engine import protocol as p
from service.engine.indexes import tuning_from
from service.engine.registry import Registry
from service.engine.served import ServedModel, Tokenizer, find_served, served_models
from service.errors import IndexGone, Overloaded, Unavailable
from service.settings import Settings
from service.store.filters import Filter

log = logging.getLogger("service.engine")

T = TypeVar("T")
RECONNECT_SECONDS = 0.2
STATUS_SECONDS = 2.0  # between status refreshes (0.2 while a model loads)
DEADLINE_MARGIN = 5.0  # seconds past the engine's own deadline before a call is given up here


def _engine_down() -> Unavailable:
    return Unavailable("The engine process is restarting; retry shortly.", retry_after=1, code="engine_unavailable")


class EngineClient:
    def __init__(self, settings: Settings, registry: Registry, address: str, secret: bytes) -> None:
        self.address = address
        self.secret = secret
        self.deadline = settings.engine_deadline_seconds + DEADLINE_MARGIN
        self.tuning = tuning_from(settings)
        self.milvus = settings.vector_backend == "milvus"
        self.models = served_models(settings, registry)
        self._tokenizers: dict[str, Tokenizer] = {}  # by tokenizer.json path
        self._ready: set[int] = set()  # collections whose index is known to be ready
        self._behind: dict[int, int] = {}  # collection id -> a committed position the engine has not taken yet
        self._writer: asyncio.StreamWriter | None = None
        self._calls: dict[int, asyncio.Future[p.Reply]] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    # -- connection ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="engine-client")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        connections = 0
        while True:
            try:
                reader, writer = await p.connect(self.address)
            except OSError:
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            self._writer = writer
            writer.write(p.GREETING + self.secret + p.frame(p.Call(0, p.Hello(os.getpid()))))
            reading = asyncio.get_running_loop().create_task(self._read(reader))
            connections += 1
            log.log(logging.INFO if connections > 1 else logging.DEBUG,  # the first is part of a quiet start
                    "%s the engine", "reconnected to" if connections > 1 else "connected to")
            self.connected.set()
            try:
                while not reading.done():
                    try:
                        await self._catch_up_behind()
                        await self._refresh()
                    except Unavailable:
                        pass  # lost it meanwhile
                    except Exception:
                        log.exception("could not take the engine's status")
                    loading = any(m.status == "loading" for m in self.models.values())
                    await asyncio.wait([reading], timeout=RECONNECT_SECONDS if loading else STATUS_SECONDS)
            finally:
                reading.cancel()
                writer.close()
            log.warning("lost the engine; reconnecting")

    def _disconnected(self) -> None:
        self.connected.clear()
        self._writer = None
        self._ready.clear()
        for model in self.models.values():
            model.status = "loading"  # a new engine loads them again
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(_engine_down())

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Hand each reply to its caller; at the end of the stream (the engine died), fail every call at once."""
        try:
            while True:
                reply = p.reply_decoder.decode(await p.read_frame(reader))
                future = self._calls.pop(reply.id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._disconnected()

    async def call(self, request: p.Request, answer: type[T] | Any = Any) -> T:
        """Send ``request`` and wait for its reply's value (converted to ``answer``), or raise its error."""
        writer = self._writer
        if writer is None or writer.is_closing():
            raise _engine_down()
        id = next(self._ids)
        future = self._loop.create_future()  # type: ignore[union-attr]
        self._calls[id] = future
        writer.write(p.frame(p.Call(id, request)))
        try:
            async with asyncio.timeout(self.deadline):
                reply = await future
        except TimeoutError:
            raise Overloaded(f"The engine did not answer within {self.deadline:g} s; retry shortly.",
                             code="engine_timeout") from None
        except asyncio.CancelledError:
            if self._writer is writer and not writer.is_closing():
                writer.write(p.frame(p.Call(0, p.Cancel(id))))
            raise
        finally:
            self._calls.pop(id, None)
        if reply.error is not None:
            raise p.exception_of(reply.error)
        return msgspec.convert(reply.value, answer) if answer is not Any else reply.value

    def _call_from_thread(self, request: p.Request, answer: type[T] | Any = Any) -> T:
        """``call`` for a worker thread: it runs on the event loop; this thread waits for it (within its deadline)."""
        return asyncio.run_coroutine_threadsafe(self.call(request, answer), self._loop).result()  # type: ignore[arg-type]

    # -- models ------------------------------------------------------------------------------------
    def _models_ready(self) -> bool:
        return all(model.status == "ready" for model in self.models.values())

    async def _refresh(self) -> p.EngineStatus:
        """Take the engine's status, telling it whether this worker has every model ready (for /ready); once
        they all are, tell it at once."""
        was_ready = self._models_ready()
        status = await self.call(p.Status(was_ready), p.EngineStatus)
        for name, state in status.models.items():
            model = self.models.get(name)
            if model is None:
                continue
            if state.status == "ready" and state.tokenizer:
                tokenizer = self._tokenizers.get(state.tokenizer)
                if tokenizer is None:
                    tokenizer = await asyncio.to_thread(Tokenizer.from_file, state.tokenizer)
                    self._tokenizers[state.tokenizer] = tokenizer
                model.tokenizer, model.dimension, model.vocab_size = tokenizer, state.dimension, state.vocab_size
                model.created = state.created
            model.status = state.status if state.status != "ready" or model.tokenizer else "loading"
        if self._models_ready() and not was_ready:
            return await self._refresh()
        return status

    def model(self, name: str, param: str = "model") -> ServedModel:
        return find_served(self.models, name, param)

    def model_status(self) -> dict[str, str]:
        return {name: model.status for name, model in self.models.items()}

    def served_models(self) -> dict[str, ServedModel]:
        return dict(self.models)

    async def embed(self, model: str, sequences: list[list[int]], *, key: str) -> np.ndarray:
        vectors = await self.call(p.Embed(model, sequences, key), p.Array)
        return vectors.numpy()

    # -- indexes -------------------------------------------------------------------------------------
    def check_index(self, dimension: int, metric: str, factory: str) -> None:
        """As the engine would (no call needed): the factory's own bounds, then on Milvus a Milvus equivalent."""
        VectorIndex(dimension, metric, factory, tuning=self.tuning)
        if self.milvus:
            milvus_type(factory, dimension, self.tuning)

    async def open_index(self, collection_id: int) -> None:
        await self.call(p.Open(collection_id))

    async def create_index(self, collection_id: int) -> None:
        await self.call(p.Create(collection_id))
        self._ready.add(collection_id)

    async def drop_index(self, collection_id: int) -> None:
        self._ready.discard(collection_id)
        await self.call(p.Drop(collection_id))

    async def index_state(self, collection_id: int) -> str | None:
        if collection_id in self._ready:
            return "ready"
        state = await self.call(p.State(collection_id))
        if state == "ready":
            self._ready.add(collection_id)
        return state

    def _on_index(self, collection_id: int, request: p.Request, answer: type[T] | Any = Any) -> T:
        try:
            return self._call_from_thread(request, answer)
        except IndexGone:
            self._ready.discard(collection_id)
            raise

    def indexed(self, collection_id: int) -> int:
        return self._on_index(collection_id, p.Indexed(collection_id), int)

    def search(self, collection_id: int, queries: np.ndarray, k: int, filter: Filter | None = None,
               filter_json: object = None) -> tuple[np.ndarray, np.ndarray]:
        scores, seqs = self._on_index(collection_id, p.Search(collection_id, p.Array.of(queries), k, filter_json),
                                      tuple[p.Array, p.Array])
        return scores.numpy(), seqs.numpy()

    def keyword_search(self, collection_id: int, queries: list[str], k: int, filter: Filter | None = None,
                       filter_json: object = None) -> tuple[np.ndarray, np.ndarray]:
        scores, seqs = self._on_index(collection_id, p.KeywordSearch(collection_id, queries, k, filter_json),
                                      tuple[p.Array, p.Array])
        return scores.numpy(), seqs.numpy()

    def apply(self, collection_id: int, write: Any) -> None:
        """Tell the engine SQL has committed ``write`` (its position alone: the engine reads the rest from SQL).
        If the engine cannot be told now, it is told later (``_catch_up_behind``) and this raises Unavailable."""
        try:
            self._on_index(collection_id, p.Apply(collection_id, write.position))
        except IndexGone:
            raise
        except Unavailable:
            self._loop.call_soon_threadsafe(self._behind.__setitem__, collection_id, write.position)  # type: ignore[union-attr]
            raise

    async def _catch_up_behind(self) -> None:
        """Have the engine take the committed writes it could not be told of (a collection dropped since is done)."""
        for collection_id, position in list(self._behind.items()):
            try:
                await self.call(p.Apply(collection_id, position))
            except IndexGone:
                pass
            if self._behind.get(collection_id) == position:
                del self._behind[collection_id]

    # -- for /ready and /metrics -----------------------------------------------------------------------
    async def status(self) -> p.EngineStatus:
        return await self._refresh()
