"""The Milvus backend (``EMBEDSEARCH_VECTOR_BACKEND=milvus``): each collection's vectors, metadata and texts in
a Milvus collection of its own (index/milvus.py), in place of the in-memory FAISS and keyword indexes of
indexes.py, behind the same methods.

SQL stays the source of truth. Milvus holds a copy of it up to a write-log position that SQL records
(``index_positions``); each write, committed to SQL first (service/domain/documents.py), is applied to
Milvus under that row's lock, so that writes from any number of servers sharing one database and one
Milvus reach Milvus one at a time, in write-log order. A write that does not start right after the
recorded position means others are missing there (a server died between its commit and Milvus, or
Milvus was unreachable): everything committed since the recorded position is read back from SQL and
applied instead. Applying is idempotent (upserts and deletes by primary key), so a replay after a crash
can repeat what Milvus has. On open, and every ``EMBEDSEARCH_SNAPSHOT_SECONDS``, each collection catches
up the same way, and the removal log up to the recorded position is pruned. A write Milvus could not take
stays committed: the collection is marked behind, and its next search catches it up first (or answers
503 while Milvus is unreachable), so an acknowledged write is never missing from a search.

Every server reads Milvus with Strong consistency, so a write through one server is visible to a search
through any other as soon as it is acknowledged. Filters run in Milvus as boolean expressions where they
mean there what they mean in SQL (milvus_filters.py); the others are evaluated by SQL, and their matching
seqs are sent as ``seq in [...]``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError

from index import Tuning, VectorIndex
from index.milvus import MilvusIndex, connect, disconnect, is_missing_collection, is_released, milvus_type
from service.engine.indexes import Write, committed_since
from service.engine.milvus_filters import compile_milvus, milvus_metadata
from service.engine.protocol import IndexStats
from service.engine.rwlock import RWLock
from service.errors import IndexGone, InvalidRequest, ServiceError, Unavailable
from service.store.documents import CollectionRow, DocumentStore
from service.store.filters import Filter

log = logging.getLogger("service.engine")

COUNT_SECONDS = 10.0  # how long a collection's vector count (for /metrics) is reused


def collection_name(collection_id: int) -> str:
    return f"embedsearch_{collection_id}"


def _unreachable(exc: Exception) -> Unavailable:
    return Unavailable(f"The vector backend (Milvus) is unreachable: {type(exc).__name__}; retry shortly.",
                       retry_after=5, code="vector_backend_unavailable")


@dataclass(eq=False)
class MilvusLive:
    row: CollectionRow
    index: MilvusIndex | None = None  # None until Milvus has been reached (it may be down when this server starts)
    lock: RWLock = field(default_factory=RWLock)  # this server's writes to it, one at a time
    behind: bool = False  # a committed write has not reached Milvus yet
    count: int = 0
    counted: float = 0.0  # monotonic time of ``count``


class MilvusIndexes:
    def __init__(self, store: DocumentStore, uri: str, token: str, tuning: Tuning, deadline: float) -> None:
        self.store = store
        self.uri = uri
        self.token = token
        self.tuning = tuning
        self.deadline = deadline
        self._client: Any = None
        self._live: dict[int, MilvusLive] = {}
        self._registering = threading.Lock()

    @property
    def client(self) -> Any:
        with self._registering:
            if self._client is None:
                self._client = connect(self.uri, self.token, self.deadline)
            return self._client

    def connect(self) -> None:
        """Reach Milvus now, at start (for milvus-lite: start it), so that the first request does not wait for
        it; if it cannot be reached, every collection catches up once it can."""
        try:
            self.client
        except Exception as exc:
            log.warning("Milvus at %s could not be reached (%s: %s); retrying on use", self.uri, type(exc).__name__, exc)

    def close(self) -> None:
        with self._registering:
            client, self._client = self._client, None
        if client is not None:
            disconnect(client, self.uri)

    def _index(self, row: CollectionRow) -> MilvusIndex:
        return MilvusIndex(self.client, collection_name(row.id), row.dimension, row.metric, row.index_factory,
                           self.tuning, self.deadline)

    # -- which collections -------------------------------------------------------------------
    def open(self, row: CollectionRow) -> None:
        """Find (or make) ``row``'s Milvus collection and catch it up with SQL. If Milvus cannot be reached now,
        the collection is opened behind: its next search (or the periodic catch-up) tries again."""
        with self._registering:
            if row.id in self._live:
                return
            live = self._live[row.id] = MilvusLive(row, behind=True)
        try:
            self._catch_up(live)
        except Exception as exc:
            log.warning("collection %s/%s (id %d): Milvus could not be reached (%s: %s); it is caught up once it can",
                        row.tenant, row.name, row.id, type(exc).__name__, exc)

    def _attach(self, live: MilvusLive) -> bool:
        """Find or make the collection's Milvus collection, loaded for searches; whether it was made afresh (a
        Milvus that lost it, or never had it: it is filled from SQL). Under the collection's lock."""
        if live.index is not None:
            return False
        index = self._index(live.row)
        made = not index.exists()
        if made:
            if self.store.last_position(live.row.id) is None:
                raise IndexGone(live.row.id)  # deleted through another server: nothing to make
            index.create()
        else:
            index.load()
        live.index = index
        return made

    def check(self, dimension: int, metric: str, factory: str) -> None:
        """ValueError unless that index can be made (the factory's own bounds, then a Milvus equivalent)."""
        VectorIndex(dimension, metric, factory, tuning=self.tuning)
        milvus_type(factory, dimension, self.tuning)

    def create(self, row: CollectionRow) -> None:
        # An HTTP worker checks only the FAISS bounds before it asks (service/engine/client.py): a string with
        # no Milvus equivalent is the client's mistake (a 400 naming `index`), not Milvus being unreachable,
        # and it is refused here before Milvus is reached or anything is made.
        try:
            self.check(row.dimension, row.metric, row.index_factory)
        except ValueError as exc:
            raise InvalidRequest(f"index: {exc}", param="index") from None
        try:
            live = MilvusLive(row, self._index(row))  # connecting may fail too: the same 503
            if live.index.exists():  # left by an earlier deployment's collection of the same id
                live.index.drop()
            live.index.create()
        except ServiceError:
            raise
        except Exception as exc:
            raise _unreachable(exc) from exc
        with self._registering:
            self._live[row.id] = live

    def drop(self, collection_id: int) -> None:
        with self._registering:
            live = self._live.pop(collection_id, None)
        index = live.index if live is not None else None
        try:
            if index is not None:
                index.drop()
            elif self.client.has_collection(collection_name(collection_id)):
                self.client.drop_collection(collection_name(collection_id))
        except Exception:  # the SQL rows are gone: an orphan Milvus collection only costs space
            log.exception("dropping Milvus collection %s failed", collection_name(collection_id))

    def state(self, collection_id: int) -> str | None:
        return "ready" if collection_id in self._live else None

    def collection_ids(self) -> set[int]:
        with self._registering:
            return set(self._live)

    def failed(self) -> list[int]:
        """None: a collection Milvus cannot serve now answers 503 until it can, then serves."""
        return []

    def _get(self, collection_id: int) -> MilvusLive:
        live = self._live.get(collection_id)
        if live is None:
            raise IndexGone(collection_id)
        return live

    def row(self, collection_id: int) -> CollectionRow:
        return self._get(collection_id).row

    def _gone(self, live: MilvusLive) -> IndexGone:
        """Its Milvus collection was dropped (the collection was deleted through another server)."""
        with self._registering:
            self._live.pop(live.row.id, None)
        return IndexGone(live.row.id)

    def _reading(self, live: MilvusLive, read: Any) -> Any:
        """``read()`` on a collection brought up to date first if it is behind; Milvus errors as domain errors."""
        try:
            if live.behind:
                with live.lock.write(self.deadline):
                    self._apply(live, None)
            try:
                return read()
            except Exception as exc:
                if not is_released(exc):
                    raise
                live.index.load()  # Milvus restarted since this server loaded the collection
                return read()
        except ServiceError:
            raise
        except Exception as exc:
            if is_missing_collection(exc):
                raise self._gone(live) from exc
            log.exception("a Milvus read of %s/%s failed", live.row.tenant, live.row.name)
            raise _unreachable(exc) from exc

    # -- searches and writes -----------------------------------------------------------------
    def indexed(self, collection_id: int) -> int:
        live = self._get(collection_id)
        live.count = self._reading(live, lambda: live.index.count())
        live.counted = time.monotonic()
        return live.count

    def search(self, collection_id: int, queries: np.ndarray, k: int, filter: Filter | None = None,
               filter_json: object = None) -> tuple[np.ndarray, np.ndarray]:
        live = self._get(collection_id)
        expression = self._expression(live, filter)
        return self._reading(live, lambda: live.index.search(queries, k, expression))

    def keyword_search(self, collection_id: int, queries: list[str], k: int, filter: Filter | None = None,
                       filter_json: object = None) -> tuple[np.ndarray, np.ndarray]:
        live = self._get(collection_id)
        expression = self._expression(live, filter)
        return self._reading(live, lambda: live.index.keyword_search(queries, k, expression))

    def _expression(self, live: MilvusLive, filter: Filter | None) -> str:
        """``filter`` as a Milvus expression: compiled where Milvus means the same, else the seqs SQL finds."""
        if filter is None:
            return ""
        compiled = compile_milvus(filter)
        if compiled is not None:
            return compiled
        seqs = self.store.seqs_matching(live.row.id, filter)
        return f"seq in [{', '.join(map(str, seqs.tolist()))}]" if seqs.size else "seq < 0"

    def apply(self, collection_id: int, write: Write | None) -> None:
        """Bring Milvus up to a committed write (None: to what SQL has committed); if Milvus cannot take it now,
        mark the collection behind (the write stays committed and is applied before the next search, or by the
        periodic catch-up)."""
        live = self._get(collection_id)
        with live.lock.write(self.deadline):
            try:
                self._apply(live, write)
            except IndexGone:
                raise
            except Exception as exc:
                if is_missing_collection(exc):
                    raise self._gone(live) from exc
                live.behind = True
                log.warning("collection %s/%s: a committed write did not reach Milvus (%s: %s); it is applied "
                            "before the next search", live.row.tenant, live.row.name, type(exc).__name__, exc)

    def _apply(self, live: MilvusLive, write: Write | None) -> int:
        """Under the recorded position's lock: apply ``write`` if it follows that position, else everything
        committed since it (since position 0 into a Milvus collection made afresh). Returns the position
        recorded now. Under the collection's lock."""
        restart = self._attach(live)
        try:
            with self.store.index_position(live.row.id) as at:
                if restart:
                    at.position = 0
                if write is not None and write.position <= at.position:
                    return at.position  # applied already, by a catch-up here or on another server
                if write is None or write.first != at.position + 1:
                    write = committed_since(self.store, live.row, at.position)
                live.index.remove(write.removed)
                if write.seqs is not None and len(write.seqs):
                    metas = [milvus_metadata(m) for m in write.metas or [{}] * len(write.seqs)]
                    live.index.upsert(write.seqs, write.vectors, metas, write.texts or [None] * len(write.seqs))
                at.position = max(at.position, write.position)
        except IntegrityError as exc:
            raise IndexGone(live.row.id) from exc  # the collection was deleted meanwhile (its row is gone)
        live.behind = False
        return at.position

    def _catch_up(self, live: MilvusLive) -> None:
        with live.lock.write(self.deadline):
            position = self._apply(live, None)
        self.store.prune_removals(live.row.id, position)

    def catch_up_all(self) -> None:
        """Catch every collection up with SQL (writes a dead server committed but never applied) and forget the
        removals Milvus has (in a worker thread, periodically)."""
        for live in list(self._live.values()):
            try:
                self._catch_up(live)
            except IndexGone:
                self._gone(live)  # deleted through another server
            except Exception as exc:
                log.warning("collection %s/%s: catching up with Milvus failed (%s: %s)", live.row.tenant,
                            live.row.name, type(exc).__name__, exc)

    def stats(self) -> list[IndexStats]:
        """Each collection's vector count (refreshed at most every COUNT_SECONDS) for /metrics."""
        stats = []
        for live in sorted(self._live.values(), key=lambda x: x.row.id):
            if live.index is not None and time.monotonic() - live.counted > COUNT_SECONDS:
                try:
                    self.indexed(live.row.id)
                except ServiceError:
                    pass
            stats.append(IndexStats(live.row.id, live.count, 0, 0, 0, 0))
        return stats
