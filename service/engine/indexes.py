"""The live indexes, one per collection: the engine's half of every search and write.

Each :class:`LiveIndex` owns a collection's FAISS index (index/), the write-log position it reflects,
its lock and its cache of what filters allow. Writes are committed to SQL first, one at a time per
collection within an HTTP worker (service/domain/documents.py), and each is applied under the write
lock, so a search, under the read lock, never meets an index half-way through one. Writes from
several HTTP workers may arrive out of write-log order: a write that does not start right after the
index's position means another one is still on its way, so the index catches up from SQL instead
(everything committed until then); the write that was on its way is then already reflected, and
skipped. A write that never arrives at all (its worker died after the commit) is caught up with the
same way, by the next one.
A write the index cannot follow is applied by a rebuild from SQL; a collection that cannot be
opened or rebuilt is *failed*: it is set aside (its requests are a 503) and every other one serves.

Everything here is synchronous and thread-safe: callers run it in worker threads. Every wait for a
lock has a deadline (``EMBEDSEARCH_ENGINE_DEADLINE_SECONDS``): past it, a 503.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index import AllowedSet, KeywordIndex, Tuning, VectorIndex
from service.engine.allowed import AllowedCache, filter_key
from service.engine.protocol import IndexStats
from service.engine.recovery import keywords_from_sql, rebuild, recover
from service.engine.rwlock import RWLock
from service.store.documents import CollectionRow, DocumentStore
from service.errors import IndexGone
from service.settings import Settings
from service.store.filters import Filter

log = logging.getLogger("service.engine")


def tuning_from(settings: Settings) -> Tuning:
    return Tuning(ef_search=settings.hnsw_ef_search, ef_construction=settings.hnsw_ef_construction,
                  nprobe=settings.ivf_nprobe or None)


@dataclass
class Write:
    """One committed write: the position it took, the seqs it removed, the seqs, vectors, texts and metadata it
    added."""

    position: int
    removed: np.ndarray
    seqs: np.ndarray | None = None
    vectors: np.ndarray | None = None
    texts: list[str | None] | None = None
    metas: list[dict] | None = None

    @property
    def first(self) -> int:
        """The first position it took: removals and additions take one each, one after another."""
        return self.position - len(self.removed) - (0 if self.seqs is None else len(self.seqs)) + 1


def committed_since(store: DocumentStore, row: CollectionRow, position: int) -> Write:
    """Everything committed to ``row``'s collection after ``position``, as one write (read back from SQL)."""
    last = store.last_position(row.id)
    if last is None:
        raise IndexGone(row.id)  # deleted meanwhile
    if last <= position:
        return Write(position, np.zeros(0, np.int64))
    changes = store.changes_since(row.id, position, row.dimension, until=last, documents_too=True)
    if len(changes.seqs) or len(changes.removed):
        log.debug("collection %s/%s: caught up from SQL to position %d (%d additions, %d removals)",
                 row.tenant, row.name, last, len(changes.seqs), len(changes.removed))
    return Write(last, changes.removed, changes.seqs, changes.vectors, changes.texts, changes.metas)


@dataclass(eq=False)
class LiveIndex:
    row: CollectionRow
    index: VectorIndex
    keywords: KeywordIndex  # BM25 over the documents' texts, at the same position
    position: int  # last write-log position the index reflects
    saved_position: int  # position of the snapshot on disk (-1: none)
    allowed: AllowedCache
    lock: RWLock = field(default_factory=RWLock)
    next_snapshot: float = 0.0  # monotonic time before which a periodic snapshot is skipped
    snapshots: int = 0  # snapshots written since the server started (for /metrics)


class Indexes:
    def __init__(self, store: DocumentStore, directory: Path, tuning: Tuning, deadline: float) -> None:
        self.store = store
        self.directory = directory
        self.tuning = tuning
        self.deadline = deadline
        self._live: dict[int, LiveIndex] = {}  # by collection id
        self._failed: dict[int, str] = {}  # collection id -> why
        self._registering = threading.Lock()

    def path(self, collection_id: int) -> Path:
        return self.directory / f"{collection_id}.faiss"

    # -- which collections -------------------------------------------------------------------
    def open(self, row: CollectionRow) -> None:
        """Bring ``row``'s index back (snapshot and replay, or rebuild), or fail that collection alone."""
        with self._registering:
            if row.id in self._live or row.id in self._failed:
                return
        try:
            got = recover(row, self.store, self.path(row.id), self.tuning)
            keywords = keywords_from_sql(row, self.store)
        except Exception as exc:
            log.exception("collection %s/%s (id %d) could not be opened; it answers 503 until it is deleted",
                          row.tenant, row.name, row.id)
            self._fail(row, f"{type(exc).__name__}: {exc}")
            return
        self._add(LiveIndex(row, got.index, keywords, got.position, got.saved_position,
                            self._cache(row, got.position)))

    def check(self, dimension: int, metric: str, factory: str) -> None:
        """Raise ValueError if that index cannot be built (before a collection is made with it)."""
        VectorIndex(dimension, metric, factory, tuning=self.tuning)

    def create(self, row: CollectionRow) -> None:
        self.path(row.id).unlink(missing_ok=True)  # left by a crash mid-delete of an earlier collection
        index = VectorIndex(row.dimension, row.metric, row.index_factory, tuning=self.tuning)
        self._add(LiveIndex(row, index, KeywordIndex(), row.last_position, -1, self._cache(row, row.last_position)))

    def drop(self, collection_id: int) -> None:
        with self._registering:
            self._live.pop(collection_id, None)
            self._failed.pop(collection_id, None)
        self.path(collection_id).unlink(missing_ok=True)  # searches under way finish on the index they hold

    def state(self, collection_id: int) -> str | None:
        """``ready``, ``failed`` or None (not opened here)."""
        return "ready" if collection_id in self._live else "failed" if collection_id in self._failed else None

    def failed(self) -> list[int]:
        return sorted(self._failed)

    def collection_ids(self) -> set[int]:
        """Every collection this engine holds an index of, failed ones too."""
        with self._registering:
            return set(self._live) | set(self._failed)

    def live(self) -> list[LiveIndex]:
        return list(self._live.values())

    def close(self) -> None:
        """Nothing to release: the snapshots are written by then."""

    def stats(self) -> list[IndexStats]:
        """Each index's size, snapshots and filter cache counters, for /metrics."""
        return [IndexStats(live.row.id, len(live.index), live.snapshots, live.allowed.hits, live.allowed.updates,
                           live.allowed.misses) for live in sorted(self._live.values(), key=lambda x: x.row.id)]

    def _cache(self, row: CollectionRow, position: int) -> AllowedCache:
        return AllowedCache(position, row.dimension)

    def _add(self, live: LiveIndex) -> None:
        with self._registering:
            self._live[live.row.id] = live

    def _fail(self, row: CollectionRow, why: str) -> None:
        with self._registering:
            self._live.pop(row.id, None)
            self._failed[row.id] = why

    def _get(self, collection_id: int) -> LiveIndex:
        live = self._live.get(collection_id)
        if live is None:  # dropped or failed since the caller looked (by another HTTP worker, say)
            raise IndexGone(collection_id)
        return live

    def row(self, collection_id: int) -> CollectionRow:
        return self._get(collection_id).row

    # -- searches and writes -----------------------------------------------------------------
    def indexed(self, collection_id: int) -> int:
        live = self._get(collection_id)
        with live.lock.read(self.deadline):
            return len(live.index)

    def search(self, collection_id: int, queries: np.ndarray, k: int,
               filter: Filter | None = None, filter_json: object = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` (scores, seqs) of each query, among the documents ``filter`` matches if given
        (``filter_json``, the filter as sent, keys its cache entry)."""
        live = self._get(collection_id)
        with live.lock.read(self.deadline):
            allowed = self._allowed(live, filter, filter_json) if filter is not None else None
            return live.index.search(queries, k, allowed)

    def keyword_search(self, collection_id: int, queries: list[str], k: int, filter: Filter | None = None,
                       filter_json: object = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` (BM25 scores, seqs) of each keyword query, among the documents ``filter`` matches."""
        live = self._get(collection_id)
        with live.lock.read(self.deadline):
            allowed = self._allowed(live, filter, filter_json).ids if filter is not None else None
            return live.keywords.search(queries, k, allowed)

    def _allowed(self, live: LiveIndex, filter: Filter, filter_json: object) -> AllowedSet:
        def matching(after: int | None) -> np.ndarray:
            return self.store.seqs_matching(live.row.id, filter, after)

        return live.allowed.allowed(filter_key(filter_json), live.position, matching, live.index.prepare_allowed)

    def apply(self, collection_id: int, write: Write | None) -> None:
        """Bring the index up to a committed write (see the module's docstring for writes out of order), or with
        None to what SQL has committed; if it cannot follow, rebuild it from SQL, and if that fails too, fail the
        collection (the write stays committed)."""
        live = self._get(collection_id)
        with live.lock.write(self.deadline):
            if write is not None and write.position <= live.position:
                return  # reflected already, by a catch-up from SQL
            if write is None or write.first != live.position + 1:
                write = committed_since(self.store, live.row, live.position)
            try:
                live.index.remove(write.removed)
                live.keywords.remove(write.removed)
                if write.seqs is not None:
                    live.index.upsert(write.seqs, write.vectors)
                    live.keywords.upsert(write.seqs, write.texts or [None] * len(write.seqs))
            except Exception:
                log.exception("applying a committed write to the index of %s/%s failed", live.row.tenant,
                              live.row.name)
                try:
                    live.index = rebuild(live.row, self.store, self.tuning)
                    live.keywords = keywords_from_sql(live.row, self.store)
                except Exception:
                    log.exception("rebuilding the index of %s/%s failed too; it answers 503 until it is deleted",
                                  live.row.tenant, live.row.name)
                    self._fail(live.row, "its index could not follow a committed write")
                    return
            live.allowed.record(write.position, write.removed)
            live.position = write.position
