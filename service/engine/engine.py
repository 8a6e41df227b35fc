"""The engine: the one door to models and indexes.

Everything above it (the domain, service/domain/) reaches the models and the FAISS and keyword indexes
through this interface alone, and hands it plain data: token ids in and float32 vectors out; a
collection's row, query vectors (or keyword queries) and a parsed filter in and (scores, seqs) out;
committed writes, each with its write-log position. Nothing crosses it that could not cross a process
boundary, and it does: with ``EMBEDSEARCH_WORKERS`` >= 1 this Engine runs in a process of its own
(service/engine/server.py) and each HTTP worker holds an :class:`~service.engine.client.EngineClient` with the same methods,
each a call over a socket (as vLLM's API servers feed one engine core). It owns all of its state:
the loaded models and their batchers (models.py), the live indexes with their locks and filter
caches (indexes.py), and their snapshots (snapshots.py); it reads SQL (service/store/) only to
rebuild or bring those up to date. With ``EMBEDSEARCH_VECTOR_BACKEND=milvus`` the indexes are Milvus
collections instead (milvus_indexes.py, the same methods), kept up to date with SQL in the background.

The coroutines are for the event loop; ``search``, ``keyword_search``, ``apply`` and ``indexed`` are
synchronous and thread-safe, for worker threads; ``model``, ``served_models``, ``model_status`` and ``check_index``
answer at once. Every request into the engine has a deadline (``EMBEDSEARCH_ENGINE_DEADLINE_SECONDS``):
past it, a 503.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from service.engine.indexes import Indexes, Write, tuning_from
from service.engine.milvus_indexes import MilvusIndexes
from service.engine.models import ModelHub
from service.engine.protocol import EngineStatus, ModelState
from service.engine.registry import Registry
from service.engine.served import ServedModel
from service.engine.snapshots import Snapshots
from service.errors import IndexGone

log = logging.getLogger("service.engine")
from service.settings import Settings
from service.store.documents import CollectionRow, DocumentStore
from service.store.filters import Filter

__all__ = ["Engine", "Write"]


class Engine:
    def __init__(self, settings: Settings, registry: Registry, store: DocumentStore) -> None:
        self.deadline = settings.engine_deadline_seconds
        # the request limits the engine process holds every worker's call to (checks.py)
        self.max_inputs, self.max_request_tokens = settings.max_inputs, settings.max_request_tokens
        self.max_body_bytes = settings.max_body_bytes
        self.models = ModelHub(settings, registry)
        self.indexes: Indexes | MilvusIndexes
        self.snapshots: Snapshots | None = None
        if settings.vector_backend == "milvus":
            self.indexes = MilvusIndexes(store, settings.milvus_location, settings.milvus_token,
                                         tuning_from(settings), self.deadline)
        else:
            self.indexes = Indexes(store, settings.data_dir / "indexes", tuning_from(settings), self.deadline)
            self.snapshots = Snapshots(self.indexes)
        self._maintaining: asyncio.Task[None] | None = None
        self._interval = settings.snapshot_seconds
        self.started = time.time()

    async def start(self) -> None:
        """Load the models (in the background) and open every collection's index; then snapshot them (FAISS) and
        keep snapshotting, or keep catching Milvus up with SQL."""
        self.models.start()
        if self.snapshots is not None:
            self.indexes.directory.mkdir(parents=True, exist_ok=True)
        else:
            await asyncio.to_thread(self.indexes.connect)
        for row in await asyncio.to_thread(self.indexes.store.all_collections):
            await asyncio.to_thread(self.indexes.open, row)
        if self.snapshots is not None:
            await self.snapshots.save_all()
        self._maintaining = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        """Every ``EMBEDSEARCH_SNAPSHOT_SECONDS``: drop the indexes of collections SQL no longer has, then snapshot
        (FAISS) or catch Milvus up with what servers that died between commit and Milvus left behind."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await asyncio.to_thread(self._drop_deleted)
            except Exception:
                log.exception("could not compare the indexes with SQL's collections")
            if self.snapshots is not None:
                await self.snapshots.save_all(periodic=True)
            else:
                await asyncio.to_thread(self.indexes.catch_up_all)

    def _drop_deleted(self) -> None:
        """Drop the index of every collection deleted from SQL whose drop never reached the engine (the deleting
        worker lost it, or died). The ids are taken before SQL is read: a collection is committed to SQL before
        its index is made, so one the engine had then and SQL lacks now was deleted."""
        held = self.indexes.collection_ids()
        in_sql = {row.id for row in self.indexes.store.all_collections()}
        for collection_id in held - in_sql:
            log.info("dropping the index of collection %d: SQL no longer has it", collection_id)
            self.indexes.drop(collection_id)

    async def stop(self) -> None:
        if self._maintaining is not None:
            self._maintaining.cancel()
        if self.snapshots is not None:
            await self.snapshots.save_all()
        await asyncio.to_thread(self.indexes.close)
        await self.models.stop()

    # -- models ------------------------------------------------------------------------------
    def model(self, name: str, param: str = "model") -> ServedModel:
        """A served, loaded model (NotFound, or Unavailable while it loads or if it failed)."""
        return self.models.get(name, param)

    def model_status(self) -> dict[str, str]:
        return self.models.status

    def served_models(self) -> dict[str, ServedModel]:
        """Every served model by name, loaded or not."""
        return dict(self.models.models)

    async def embed(self, model: str, sequences: list[list[int]], *, key: str) -> np.ndarray:
        """Token-id sequences in, L2-normalised float32 vectors out; ``key`` shares the encoder fairly."""
        return await self.models.get(model).batcher.embed(sequences, key=key, timeout=self.deadline)

    # -- indexes ------------------------------------------------------------------------------
    def check_index(self, dimension: int, metric: str, factory: str) -> None:
        """ValueError (in words for a client) unless such an index can be made."""
        self.indexes.check(dimension, metric, factory)

    async def open_index(self, collection_id: int) -> None:
        """Open the index of a collection made behind the engine's back (a restore), as SQL defines it."""
        await asyncio.to_thread(self._with_row, collection_id, self.indexes.open)

    async def create_index(self, collection_id: int) -> None:
        """Make the (empty) index of a collection just committed to SQL, as SQL defines it."""
        await asyncio.to_thread(self._with_row, collection_id, self.indexes.create)

    def _with_row(self, collection_id: int, then: Callable[[CollectionRow], None]) -> None:
        """``then(row)`` with the collection's row read from SQL here (IndexGone if there is none): a caller
        names the collection, SQL alone says what it is."""
        row = self.indexes.store.collection(collection_id)
        if row is None:
            raise IndexGone(collection_id)
        then(row)

    async def drop_index(self, collection_id: int) -> None:
        """Drop the index of a collection deleted from SQL (ValueError, and nothing dropped, while SQL has it)."""
        if await asyncio.to_thread(self.indexes.store.collection, collection_id) is not None:
            raise ValueError(f"collection {collection_id} is still in SQL: delete it there first")
        self.indexes.drop(collection_id)

    async def index_state(self, collection_id: int) -> str | None:
        """``ready``, ``failed`` (it answers 503) or None (not opened here)."""
        return self.indexes.state(collection_id)

    def indexed(self, collection_id: int) -> int:
        return self.indexes.indexed(collection_id)

    def search(self, collection_id: int, queries: np.ndarray, k: int, filter: Filter | None = None,
               filter_json: object = None) -> tuple[np.ndarray, np.ndarray]:
        return self.indexes.search(collection_id, queries, k, filter, filter_json)

    def keyword_search(self, collection_id: int, queries: list[str], k: int, filter: Filter | None = None,
                       filter_json: object = None) -> tuple[np.ndarray, np.ndarray]:
        return self.indexes.keyword_search(collection_id, queries, k, filter, filter_json)

    def apply(self, collection_id: int, write: Write | None) -> None:
        """Bring the index up to a committed write (``write``: what it committed, from the domain in this process),
        or with None up to everything SQL has committed: the engine process takes a write's content from SQL
        alone, never from the frame that announced it."""
        self.indexes.apply(collection_id, write)

    def collection(self, collection_id: int) -> CollectionRow:
        """The row of a collection whose index is live here (IndexGone if none)."""
        return self.indexes.row(collection_id)

    # -- for /ready and /metrics ----------------------------------------------------------------
    async def status(self) -> EngineStatus:
        """The models' states and batcher counters, the failed collections, each index's size and filter cache."""
        models = {}
        for name, served in self.models.models.items():
            state = ModelState(served.status, served.created, served.dimension, served.vocab_size)
            batcher = served.batcher
            if batcher is not None:
                stats = batcher.stats
                state.forward_passes, state.sequences = stats.forward_passes, stats.sequences
                state.real_tokens, state.padded_tokens = stats.real_tokens, stats.padded_tokens
                state.recent_batch_sizes = list(stats.recent_batch_sizes)
                state.pending, state.capacity = batcher.pending, batcher.max_pending
            models[name] = state
        indexes = await asyncio.to_thread(self.indexes.stats)
        return EngineStatus(self.started, models, self.indexes.failed(), indexes, workers=0)
