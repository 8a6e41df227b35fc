"""Collections: the one place that decides the order of SQL and FAISS writes.

Order of a write: validate everything, embed texts (outside any lock), then under the collection's
write lock commit to SQL (the source of truth: vectors included) and apply the same change to the
in-memory FAISS index. The client hears back only after the commit, so an acknowledged write
survives a crash; the index on disk is a snapshot tagged with the write-log position it reflects,
saved in the background, and on start it is loaded and brought up to date from SQL (or rebuilt).
Searches hold the read lock across the FAISS search and the SQL fetch of the hits, so they never
see half of an upsert.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import ColumnElement, true

from index import AllowedSet, VectorIndex, build_from_chunks
from service.api.schemas import (
    BatchSearchResponse,
    Collection,
    CollectionCreate,
    CollectionList,
    Deleted,
    DeleteRequest,
    DeleteResponse,
    Document,
    DocumentIn,
    DocumentPage,
    Hit,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
    Usage,
)
from service.embeddings import EmbeddingsService, truncate_dimensions
from service.errors import Conflict, InvalidRequest, NotFound, Unavailable
from service.filter_cache import FilterCache, filter_key
from service.limits import check_json_depth
from service.rwlock import RWLock
from service.store.documents import (
    CollectionRow,
    DocumentStore,
    DuplicateCollection,
    NewDocument,
    StoredDocument,
)
from service.store.filters import compile_filter
from service.store.keys import Principal
from service.store.tables import documents

log = logging.getLogger("service.collections")

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_DOCUMENTS = 1000
MAX_ID_LENGTH = 256
MAX_QUERIES = 256
MAX_SEARCH_HITS = 10_000  # queries x top_k of one search
MAX_RESPONSE_VALUES = 1 << 21  # vector values in one response (queries x top_k x dimension with include=vector)
MAX_METADATA_DEPTH = 32  # levels of nesting in a document's metadata, the metadata object itself the first
MAX_RESPONSE_BYTES = 64 << 20  # stored text and metadata in one answer (a search, a page of documents)
MAX_DIMENSION = 65536
MAX_INDEX_LENGTH = 128
SNAPSHOT_SPACING = 10  # a periodic snapshot that took T seconds is not repeated for SNAPSHOT_SPACING * T
PREPARED_FILTERS = 8  # per collection: filters whose allowed ids are kept prepared for FAISS


@dataclass(eq=False)
class LiveCollection:
    row: CollectionRow
    index: VectorIndex
    position: int  # last write-log position the in-memory index reflects
    saved_position: int  # position of the snapshot on disk (-1: none)
    lock: RWLock = field(default_factory=RWLock)
    next_snapshot: float = 0.0  # monotonic time before which a periodic snapshot is skipped
    filters: FilterCache = field(init=False)  # what recent search filters matched
    prepared: dict[bytes, AllowedSet] = field(default_factory=dict)  # the same, ready for the index
    prepared_lock: threading.Lock = field(default_factory=threading.Lock)  # searches run in threads

    def __post_init__(self) -> None:
        self.filters = FilterCache(self.position)


class CollectionsService:
    def __init__(self, store: DocumentStore, embeddings: EmbeddingsService, data_dir: Path, dialect: str) -> None:
        self.store = store
        self.embeddings = embeddings
        self.index_dir = data_dir / "indexes"
        self.dialect = dialect
        self._live: dict[tuple[str, str], LiveCollection] = {}
        # Collections that could not be opened (or whose index could not follow a committed write): every
        # request to one is a 503 until it is deleted; the others are served. (tenant, name) -> (row, why)
        self._failed: dict[tuple[str, str], tuple[CollectionRow, str]] = {}
        self._admin = asyncio.Lock()  # create / delete

    # -- start-up, snapshots, shutdown -----------------------------------------------------
    def _index_path(self, row: CollectionRow) -> Path:
        return self.index_dir / f"{row.id}.faiss"

    def _open(self, row: CollectionRow) -> LiveCollection:
        """Load a collection's snapshot and replay the writes after it, or rebuild it from SQL."""
        path = self._index_path(row)
        try:
            index, position = VectorIndex.load(path)
            removed, seqs, vectors = self.store.changes_since(row.id, position, row.dimension)
            index.remove(removed)
            index.upsert(seqs, vectors)
            saved = position
            position = max(position, row.last_position)
            in_sql = np.sort(self.store.seqs_where(row.id, true()))
            if not np.array_equal(index.ids(), in_sql):
                raise ValueError(f"after replay the index holds {len(index)} ids, SQL {len(in_sql)}, not the same")
            log.info("collection %s/%s: snapshot at %d, replayed %d additions and %d removals",
                     row.tenant, row.name, saved, len(seqs), len(removed))
        except FileNotFoundError:
            index, position, saved = self._rebuild(row), row.last_position, -1
        except Exception as exc:  # a corrupt or inconsistent snapshot: SQL is the source of truth
            log.warning("collection %s/%s: rebuilding the index from SQL (%s)", row.tenant, row.name, exc)
            index, position, saved = self._rebuild(row), row.last_position, -1
        return LiveCollection(row=row, index=index, position=position, saved_position=saved)

    def _rebuild(self, row: CollectionRow) -> VectorIndex:
        log.info("collection %s/%s: rebuilding its index from SQL", row.tenant, row.name)
        chunks = self.store.iter_vectors(row.id, row.dimension)
        return build_from_chunks(row.dimension, row.metric, row.index_factory, chunks, total=self.store.count(row.id))

    def _open_or_fail(self, row: CollectionRow) -> LiveCollection | None:
        """``_open``, or None with the collection recorded as failed: one broken collection (say rows that
        cannot be indexed) must not keep the server, and every other tenant, down."""
        try:
            live = self._open(row)
        except Exception as exc:
            log.exception("collection %s/%s (id %d) could not be opened; it answers 503 until it is deleted",
                          row.tenant, row.name, row.id)
            self._failed[(row.tenant, row.name)] = (row, f"{type(exc).__name__}: {exc}")
            return None
        self._live[(row.tenant, row.name)] = live
        return live

    def failed(self) -> list[int]:
        """Ids of the collections that could not be opened (``/ready`` lists them)."""
        return sorted(row.id for row, _ in self._failed.values())

    async def start(self) -> None:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        rows = await asyncio.to_thread(self.store.all_collections)
        for row in rows:
            await asyncio.to_thread(self._open_or_fail, row)
        await self.snapshot_all()

    async def snapshot(self, live: LiveCollection) -> None:
        """Save the index if it moved on since the last snapshot, then forget the covered removals."""
        async with live.lock.read():  # searches go on; writes wait
            position = live.position
            if position == live.saved_position:
                return
            began = time.monotonic()
            await asyncio.to_thread(live.index.save, self._index_path(live.row), position)
            took = time.monotonic() - began
        # Writes wait while a snapshot is written: keep that under a tenth of the time for big indexes.
        live.next_snapshot = time.monotonic() + SNAPSHOT_SPACING * took
        live.saved_position = position
        await asyncio.to_thread(self.store.prune_removals, live.row.id, position)

    async def snapshot_all(self, periodic: bool = False) -> None:
        for live in list(self._live.values()):
            if periodic and time.monotonic() < live.next_snapshot:
                continue
            try:
                await self.snapshot(live)
            except Exception:
                log.exception("snapshot of collection %s/%s failed", live.row.tenant, live.row.name)

    async def run_snapshots(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.snapshot_all(periodic=True)

    # -- collections -------------------------------------------------------------------------
    async def _live_or_404(self, principal: Principal, name: str) -> LiveCollection:
        live = self._live.get((principal.tenant, name)) or await self._discover(principal.tenant, name)
        if live is None:
            if (principal.tenant, name) in self._failed:
                raise _unavailable(name)
            raise _no_collection(name)
        return live

    async def _discover(self, tenant: str, name: str) -> LiveCollection | None:
        """Open a collection that appeared in SQL behind the server's back (``python -m service restore``)."""
        if (tenant, name) in self._failed:
            return None
        row = await asyncio.to_thread(self.store.get_collection, tenant, name)
        if row is None:
            return None
        async with self._admin:
            live = self._live.get((tenant, name))
            if live is None and (tenant, name) not in self._failed:
                live = await asyncio.to_thread(self._open_or_fail, row)
        return live

    async def _describe(self, live: LiveCollection) -> Collection:
        async with live.lock.read():
            count = await asyncio.to_thread(self.store.count, live.row.id)
            indexed = len(live.index)
        return _collection(live.row, count, indexed)

    async def _describe_failed(self, row: CollectionRow) -> Collection:
        return _collection(row, await asyncio.to_thread(self.store.count, row.id), 0, "unavailable")

    async def create(self, principal: Principal, request: CollectionCreate) -> Collection:
        if not NAME.match(request.name):
            raise InvalidRequest("name must be 1-64 characters of A-Z, a-z, 0-9, _ and -.", param="name")
        dimension = request.dimension
        if request.model is not None:
            encoder = self.embeddings.hub.get(request.model).encoder
            dimension = dimension or encoder.dimension
            if not 1 <= dimension <= encoder.dimension:
                raise InvalidRequest(
                    f"dimension must be between 1 and {encoder.dimension} for model `{request.model}`.",
                    param="dimension",
                )
        elif dimension is None:
            raise InvalidRequest("dimension is required for a collection without a model.", param="dimension")
        if not 1 <= dimension <= MAX_DIMENSION:
            raise InvalidRequest(f"dimension must be between 1 and {MAX_DIMENSION}.", param="dimension")
        _check_text(request.index, "index", param="index")
        if len(request.index) > MAX_INDEX_LENGTH:  # the column's size
            raise InvalidRequest(f"index must be at most {MAX_INDEX_LENGTH} characters.", param="index")
        try:
            index = VectorIndex(dimension, request.metric, request.index)
        except ValueError as exc:
            raise InvalidRequest(f"index: {exc}", param="index") from None
        live = await _to_the_end(self._register(principal, request, dimension, index))
        return await self._describe(live)

    async def _register(self, principal: Principal, request: CollectionCreate, dimension: int,
                        index: VectorIndex) -> LiveCollection:
        async with self._admin:
            try:
                row = await asyncio.to_thread(
                    self.store.create_collection, principal.tenant, request.name, request.model, dimension,
                    request.metric, request.index,
                )
            except DuplicateCollection:
                raise Conflict(f"A collection named `{request.name}` already exists.", param="name",
                               code="collection_exists") from None
            self._index_path(row).unlink(missing_ok=True)  # left by a crash mid-delete of an earlier collection
            live = LiveCollection(row=row, index=index, position=row.last_position, saved_position=-1)
            self._live[(row.tenant, row.name)] = live
        return live

    async def list_all(self, principal: Principal) -> CollectionList:
        rows = await asyncio.to_thread(self.store.all_collections, principal.tenant)
        data = []
        for row in sorted(rows, key=lambda r: r.name):
            live = self._live.get((row.tenant, row.name)) or await self._discover(row.tenant, row.name)
            if live is not None:
                data.append(await self._describe(live))
            elif (row.tenant, row.name) in self._failed:
                data.append(await self._describe_failed(row))
        return CollectionList(data=data)

    async def get(self, principal: Principal, name: str) -> Collection:
        return await self._describe(await self._live_or_404(principal, name))

    async def delete(self, principal: Principal, name: str) -> Deleted:
        await _to_the_end(self._drop(principal, name))
        return Deleted(id=name, object="collection")

    async def _drop(self, principal: Principal, name: str) -> None:
        failed = self._failed.get((principal.tenant, name))
        if failed is not None:  # the way out for a collection that cannot be opened
            async with self._admin:
                if self._failed.get((principal.tenant, name)) is failed:
                    await asyncio.to_thread(self.store.delete_collection, failed[0].id)
                    del self._failed[(principal.tenant, name)]
                    self._index_path(failed[0]).unlink(missing_ok=True)
            return
        live = await self._live_or_404(principal, name)
        async with self._admin, live.lock.write():
            if self._live.get((principal.tenant, name)) is not live:
                raise _no_collection(name)
            await asyncio.to_thread(self.store.delete_collection, live.row.id)
            del self._live[(principal.tenant, name)]
            self._index_path(live.row).unlink(missing_ok=True)

    # -- documents ---------------------------------------------------------------------------
    async def upsert(self, principal: Principal, name: str, request: UpsertRequest) -> UpsertResponse:
        live = await self._live_or_404(principal, name)
        row = live.row
        docs = _validated_documents(request.documents, row)
        usage = 0
        to_embed = [i for i, d in enumerate(docs) if d.vector is None]
        if to_embed:
            vectors, usage = await self._embed(row, [docs[i].text for i in to_embed], "document", "documents",
                                               [f"documents[{i}].text" for i in to_embed])
            for i, vector in zip(to_embed, vectors):
                docs[i].vector = vector
        await self._write(live, self._upsert_now, live, docs)
        return UpsertResponse(ids=[d.id for d in docs], upserted=len(docs),
                              usage=Usage(prompt_tokens=usage, total_tokens=usage))

    async def _embed(self, row: CollectionRow, texts: list[str], purpose: str, param: str,
                     names: list[str]) -> tuple[np.ndarray, int]:
        """Embed texts with the collection's model, cut to its dimension (Matryoshka); returns (vectors, tokens).

        ``names`` name the texts in errors: a text whose vector is all zeros at this dimension cannot
        be compared by cosine (nor be indexed), so it is refused like a zero vector sent by the client."""
        vectors, tokens = await self.embeddings.embed_texts(row.model, texts, purpose=purpose, param=param,
                                                            key=row.tenant)  # the encoder is shared fairly by tenant
        if row.dimension < vectors.shape[1]:
            vectors = truncate_dimensions(vectors, row.dimension)
        if row.metric == "cosine":
            for i in np.flatnonzero(~_normalisable(vectors)):
                raise InvalidRequest(f"{names[i]} embeds to a vector of zeros at dimension {row.dimension}, which "
                                     "a cosine collection cannot compare.", param=param)
        return vectors, tokens

    async def _write(self, live: LiveCollection, write: Any, *args: Any) -> Any:
        """Run ``write`` (SQL commit, then the same change to FAISS) in a thread under the write lock.

        Once started it runs to the end even if the client goes away, and the lock is held until it
        has: a search never meets an index that is half-way through a change."""
        async with live.lock.write():
            if self._live.get((live.row.tenant, live.row.name)) is not live:
                raise _no_collection(live.row.name)
            return await _to_the_end(asyncio.to_thread(write, *args))

    def _upsert_now(self, live: LiveCollection, docs: list[NewDocument]) -> None:
        seqs, replaced = self.store.upsert(live.row.id, docs)
        self._apply(live, int(seqs[-1]), replaced, seqs, np.stack([d.vector for d in docs]))

    def _delete_now(self, live: LiveCollection, where: ColumnElement[bool]) -> int:
        removed, position = self.store.delete(live.row.id, where)
        if position is not None:
            self._apply(live, position, removed)
        return len(removed)

    def _apply(self, live: LiveCollection, position: int, removed: np.ndarray,
               seqs: np.ndarray | None = None, vectors: np.ndarray | None = None) -> None:
        """Bring the index up to a committed write; if that fails, rebuild it from SQL."""
        try:
            live.index.remove(removed)
            if seqs is not None:
                live.index.upsert(seqs, vectors.astype(np.float32))
        except Exception:
            log.exception("applying a committed write to the index of %s/%s failed", live.row.tenant, live.row.name)
            try:
                live.index = self._rebuild(live.row)
            except Exception:  # the write is committed (SQL is the truth), but this index cannot serve it
                log.exception("rebuilding the index of %s/%s failed too; it answers 503 until it is deleted",
                              live.row.tenant, live.row.name)
                key = (live.row.tenant, live.row.name)
                self._failed[key] = (live.row, "its index could not follow a committed write")
                self._live.pop(key, None)
                return
            live.prepared.clear()  # they hold the old index
        live.filters.record(position, removed)
        live.position = position

    async def get_document(self, principal: Principal, name: str, doc_id: str, with_vector: bool) -> Document:
        live = await self._live_or_404(principal, name)
        _check_text(doc_id, "id", param="id")  # PostgreSQL cannot even compare a string holding NUL
        doc = await asyncio.to_thread(self.store.get, live.row.id, doc_id)
        if doc is None:
            raise NotFound(f"No document with id `{doc_id}` in `{name}`.", param="id", code="document_not_found")
        return _document(doc, live.row.dimension, with_vector)

    async def list_documents(
        self, principal: Principal, name: str, limit: int, cursor: str | None, filter_json: str | None
    ) -> DocumentPage:
        live = await self._live_or_404(principal, name)
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be between 1 and 1000.", param="limit")
        after = _decode_cursor(cursor) if cursor else None
        where = self._where(_parse_filter_param(filter_json))
        docs = await asyncio.to_thread(self.store.page, live.row.id, where, after, limit + 1)
        has_more = len(docs) > limit
        docs = docs[:limit]
        _check_response_size(docs, "limit", {"text", "metadata"})
        next_cursor = _encode_cursor(docs[-1].id) if has_more else None
        return DocumentPage(data=[_document(d, live.row.dimension, False) for d in docs], next_cursor=next_cursor,
                            has_more=has_more)

    async def delete_document(self, principal: Principal, name: str, doc_id: str) -> Deleted:
        live = await self._live_or_404(principal, name)
        _check_text(doc_id, "id", param="id")
        if await self._delete(live, documents.c.id == doc_id) == 0:
            raise NotFound(f"No document with id `{doc_id}` in `{name}`.", param="id", code="document_not_found")
        return Deleted(id=doc_id, object="document")

    async def delete_documents(self, principal: Principal, name: str, request: DeleteRequest) -> DeleteResponse:
        live = await self._live_or_404(principal, name)
        if request.ids is None and request.filter is None:
            raise InvalidRequest("Give ids, a filter, or both (`\"filter\": {}` deletes every document).",
                                 param="ids")
        where = self._where(request.filter)
        if request.ids is not None:
            if len(request.ids) > MAX_DOCUMENTS * 10:
                raise InvalidRequest(f"At most {MAX_DOCUMENTS * 10} ids per call.", param="ids")
            for i, doc_id in enumerate(request.ids):
                _check_text(doc_id, f"ids[{i}]", param="ids")
            where = where & documents.c.id.in_(request.ids)
        return DeleteResponse(deleted=await self._delete(live, where))

    async def _delete(self, live: LiveCollection, where: ColumnElement[bool]) -> int:
        return await self._write(live, self._delete_now, live, where)

    # -- search ------------------------------------------------------------------------------
    async def search(self, principal: Principal, name: str, request: SearchRequest) -> bytes:
        """The JSON of a SearchResponse (one query) or a BatchSearchResponse (several)."""
        live = await self._live_or_404(principal, name)
        row = live.row
        given = [f for f in ("query", "vector", "queries", "vectors") if getattr(request, f) is not None]
        if len(given) != 1:
            raise InvalidRequest("Give exactly one of query, vector, queries or vectors.",
                                 param=given[0] if given else "query")
        if not 1 <= request.top_k <= 1000:
            raise InvalidRequest("top_k must be between 1 and 1000.", param="top_k")
        if request.min_score is not None and not math.isfinite(request.min_score):
            raise InvalidRequest("min_score must be a finite number.", param="min_score")
        kind = given[0]
        usage = 0
        if kind in ("query", "queries"):
            texts = [request.query] if kind == "query" else request.queries
            _check_count(texts, kind)
            if row.model is None:
                raise InvalidRequest(f"Collection `{name}` has no model: search it with vector or vectors.", param=kind)
            for i, text in enumerate(texts):
                if not text:
                    raise InvalidRequest(f"{kind} must not be empty." if kind == "query" else f"queries[{i}] is empty.",
                                         param=kind)
            _check_search_size(len(texts), request, row)
            queries, usage = await self._embed(row, texts, "query", kind,
                                               [kind] if kind == "query" else [f"queries[{i}]" for i in range(len(texts))])
        else:
            raw = [request.vector] if kind == "vector" else request.vectors
            _check_count(raw, kind)
            _check_search_size(len(raw), request, row)
            queries = np.stack([_vector(v, row, kind if kind == "vector" else f"vectors[{i}]", kind)
                                for i, v in enumerate(raw)])
        where = self._where(request.filter) if request.filter is not None else None
        key = filter_key(request.filter) if where is not None else None
        usage_struct = Usage(prompt_tokens=usage, total_tokens=usage)
        async with live.lock.read():  # one worker-thread hop: filter, index, SQL fetch, the response's bytes
            return await asyncio.to_thread(self._answer, live, queries, request, key, where,
                                           kind in ("query", "vector"), usage_struct)

    def _answer(self, live: LiveCollection, queries: np.ndarray, request: SearchRequest, key: bytes | None,
                where: ColumnElement[bool] | None, single: bool, usage: Usage) -> bytes:
        """The whole search in a worker thread, down to the encoded response, so that a big answer never
        holds the event loop (its size is bounded: see _check_search_size and _check_response_size)."""
        scores, seqs, found = self._nearest(live, queries, request.top_k, key, where)
        include = set(request.include)
        _check_response_size(found.values(), "top_k", include)
        lists = [self._hits(live.row, score_row, seq_row, found, include, request.min_score)
                 for score_row, seq_row in zip(scores, seqs)]
        if single:
            return msgspec.json.encode(SearchResponse(data=lists[0], usage=usage))
        return msgspec.json.encode(BatchSearchResponse(data=lists, usage=usage))

    def _nearest(self, live: LiveCollection, queries: np.ndarray, top_k: int, key: bytes | None,
                 where: ColumnElement[bool] | None) -> tuple[np.ndarray, np.ndarray, dict[int, StoredDocument]]:
        """The index's top_k (among the filter's documents, if any) and the stored documents they name."""
        allowed = self._allowed(live, key, where) if where is not None else None
        scores, seqs = live.index.search(queries, top_k, allowed)
        wanted = sorted({int(s) for s in seqs.ravel() if s >= 0})
        return scores, seqs, self.store.by_seqs(live.row.id, wanted)

    def _allowed(self, live: LiveCollection, key: bytes, where: ColumnElement[bool]) -> AllowedSet:
        """The documents a filter allows, prepared for the index; both kept for the next search with it."""
        seqs = live.filters.allowed(key, live.position, lambda after: self.store.seqs_where(live.row.id, where, after))
        with live.prepared_lock:
            prepared = live.prepared.get(key)
        if prepared is None or prepared.source is not seqs or not prepared.current:
            prepared = live.index.prepare_allowed(seqs)
        with live.prepared_lock:
            live.prepared.pop(key, None)
            live.prepared[key] = prepared  # most recently used last
            while len(live.prepared) > PREPARED_FILTERS:
                live.prepared.pop(next(iter(live.prepared)))
        return prepared

    @staticmethod
    def _hits(row: CollectionRow, scores: np.ndarray, seqs: np.ndarray, found: dict[int, StoredDocument],
              include: set[str], min_score: float | None) -> list[Hit]:
        lower_is_better = row.metric == "l2"
        pairs = [(float(score), int(seq)) for score, seq in zip(scores, seqs) if seq >= 0 and int(seq) in found]
        if min_score is not None:
            pairs = [(s, q) for s, q in pairs if (s <= min_score if lower_is_better else s >= min_score)]
        pairs.sort(key=lambda p: (p[0] if lower_is_better else -p[0], p[1]))  # best first; ties by age
        hits = []
        for score, seq in pairs:
            doc = found[seq]
            hits.append(Hit(
                id=doc.id,
                score=score,
                text=doc.text if "text" in include else None,
                metadata=msgspec.Raw(doc.metadata_json) if "metadata" in include else None,  # as stored
                vector=_unblob(doc.vector, row.dimension) if "vector" in include else None,
            ))
        return hits

    def _where(self, filter: Any) -> ColumnElement[bool]:
        return true() if filter is None else compile_filter(filter, documents.c.meta, self.dialect)


# -- validation helpers (one place for every document and vector check) ---------------------


async def _to_the_end(work: Awaitable[Any]) -> Any:
    """Await ``work`` (a commit and the bookkeeping after it) to its end even if the caller is cancelled (a
    client that went away): it is never stopped between the two. The cancellation is raised afterwards."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _no_collection(name: str) -> NotFound:
    return NotFound(f"No collection named `{name}`.", param="name", code="collection_not_found")


def _unavailable(name: str) -> Unavailable:
    return Unavailable(f"Collection `{name}` could not be opened (the server log says why); it answers 503 until "
                       "it is deleted.", retry_after=60, code="collection_unavailable")


def _collection(row: CollectionRow, count: int, indexed: int, status: str = "ready") -> Collection:
    return Collection(name=row.name, model=row.model, dimension=row.dimension, metric=row.metric,
                      index=row.index_factory, count=count, indexed=indexed,
                      created_at=int(row.created_at.timestamp()), status=status)


def _check_count(items: list[Any], param: str) -> None:
    if not items:
        raise InvalidRequest(f"{param} must not be empty.", param=param)
    if len(items) > MAX_QUERIES:
        raise InvalidRequest(f"At most {MAX_QUERIES} {param} per search.", param=param)


def _vector(values: list[float], row: CollectionRow, where: str, param: str) -> np.ndarray:
    if len(values) != row.dimension:
        raise InvalidRequest(f"{where} has {len(values)} values; this collection's dimension is {row.dimension}.",
                             param=param)
    with np.errstate(over="ignore"):
        vector = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise InvalidRequest(f"{where} contains NaN or infinite values (or values beyond float32).", param=param)
    if row.metric == "cosine" and not _normalisable(vector[None])[0]:
        raise InvalidRequest(f"{where} is all zeros: a cosine collection cannot compare a vector without a "
                             "direction.", param=param)
    return vector


def _normalisable(vectors: np.ndarray) -> np.ndarray:
    """Which rows have a length to divide by (cosine); in float64, so tiny float32 values still count."""
    return np.linalg.norm(vectors.astype(np.float64), axis=1) > 0


def _check_search_size(queries: int, request: SearchRequest, row: CollectionRow) -> None:
    """Bound the work and the answer of one search before doing any of it."""
    if queries * request.top_k > MAX_SEARCH_HITS:
        raise InvalidRequest(f"{queries} queries x top_k {request.top_k} asks for more than {MAX_SEARCH_HITS} hits "
                             "in one search: lower top_k or split the queries.", param="top_k")
    if "vector" in request.include and queries * request.top_k * row.dimension > MAX_RESPONSE_VALUES:
        raise InvalidRequest(f"{queries} queries x top_k {request.top_k} x dimension {row.dimension} vector values "
                             f"are more than {MAX_RESPONSE_VALUES} in one response: lower top_k, split the queries, "
                             "or leave `vector` out of include.", param="include")


def _check_response_size(docs: Iterable[StoredDocument], param: str, include: set[str]) -> None:
    """Refuse an answer whose stored text and metadata alone exceed MAX_RESPONSE_BYTES (characters count as
    bytes: a bound good enough to keep one request from taking the server's memory)."""
    text, metadata = "text" in include, "metadata" in include
    size = sum((len(doc.text or "") if text else 0) + (len(doc.metadata_json) if metadata else 0) for doc in docs)
    if size > MAX_RESPONSE_BYTES:
        raise InvalidRequest(f"The documents of this answer hold about {size >> 20} MiB of text and metadata, more "
                             f"than the {MAX_RESPONSE_BYTES >> 20} MiB one response may carry: lower {param}"
                             + (", or leave text and metadata out of include." if param == "top_k" else "."),
                             param=param, code="response_too_large")


def _check_text(value: str, where: str, param: str = "documents") -> None:
    """Strings bound for SQL: PostgreSQL can store neither NUL nor (in UTF-8) unpaired surrogates."""
    if "\x00" in value:
        raise InvalidRequest(f"{where} contains a NUL character.", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where} contains an unpaired surrogate.", param=param) from None


def _check_json(value: Any, where: str, depth: int = 1) -> None:
    """``depth``: the nesting level of ``value`` (the metadata object itself is level 1)."""
    if depth > MAX_METADATA_DEPTH and isinstance(value, (dict, list)):
        raise InvalidRequest(f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep.", param="documents")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{where} contains a non-finite number.", param="documents")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_json(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, where, depth + 1)


def _validated_documents(items: list[DocumentIn], row: CollectionRow) -> list[NewDocument]:
    """Check a whole upsert before anything is written: it is all or nothing."""
    if not 1 <= len(items) <= MAX_DOCUMENTS:
        raise InvalidRequest(f"documents must hold 1 to {MAX_DOCUMENTS} documents, got {len(items)}.",
                             param="documents")
    docs: list[NewDocument] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"documents[{i}]"
        doc_id = item.id if item.id is not None else uuid.uuid4().hex
        if not 1 <= len(doc_id) <= MAX_ID_LENGTH:
            raise InvalidRequest(f"{where}.id must be 1 to {MAX_ID_LENGTH} characters.", param="documents")
        _check_text(doc_id, f"{where}.id")
        if doc_id in seen:
            raise InvalidRequest(f"{where}.id `{doc_id}` appears twice in this call.", param="documents")
        seen.add(doc_id)
        if item.text is not None:
            _check_text(item.text, f"{where}.text")
        vector = None
        if item.vector is not None:
            vector = _vector(item.vector, row, f"{where}.vector", "documents")
        elif not item.text:
            raise InvalidRequest(f"{where} needs a vector or a non-empty text.", param="documents")
        elif row.model is None:
            raise InvalidRequest(
                f"{where} has text but no vector, and collection `{row.name}` has no model to embed it.",
                param="documents",
            )
        metadata = item.metadata or {}
        _check_json(metadata, f"{where}.metadata")
        docs.append(NewDocument(id=doc_id, text=item.text, metadata=metadata, vector=vector))
    return docs


def _unblob(blob: bytes, dimension: int) -> list[float]:
    return np.frombuffer(blob, dtype="<f4", count=dimension).tolist()


def _document(doc: StoredDocument, dimension: int, with_vector: bool) -> Document:
    return Document(id=doc.id, text=doc.text, metadata=msgspec.Raw(doc.metadata_json),
                    vector=_unblob(doc.vector, dimension) if with_vector else None)


def _encode_cursor(doc_id: str) -> str:
    return base64.urlsafe_b64encode(doc_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        after = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = "\x00"
    if "\x00" in after:  # no id holds NUL (and PostgreSQL could not compare with one)
        raise InvalidRequest("cursor is not one this server gave out.", param="cursor")
    return after


def _parse_filter_param(value: str | None) -> Any:
    if value is None:
        return None
    check_json_depth(value, what="filter", param="filter")  # json.loads recurses per level
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"filter is not valid JSON: {exc.msg}.", param="filter") from None
