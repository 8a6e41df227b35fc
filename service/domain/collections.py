"""Collections: a tenant's named sets of documents, their definitions and the order of their writes.

SQL's ``collections`` table is the one authority on which collections exist; an HTTP worker's copy of a
row is a cache. The registry keeps each collection's row by (tenant, name), and one write lock per
collection, which service/domain/documents.py holds across a commit and its index write, so that the
engine is handed writes in write-log order.

How the cache stays right across processes: ids are never handed out twice (service/store/documents.py),
so a cached row is exact for as long as its collection exists, and every use of it proves that it still
does: each SQL read and write by its id raises CollectionDeleted, and each engine call IndexGone, once it
is gone. Either one drops the cached row, and :meth:`Collections.using` looks the name up again in SQL
and runs the request once more, on the collection that exists under that name now (or answers 404). So
a collection deleted, or deleted and made again, through another worker (or another server sharing the
database) is never answered for from a stale view, and a 200 for a delete means it is gone for all.

The engine owns the index; a collection whose index could not be opened (service/engine/indexes.py) is
*failed*: every request to it is a 503 but its deletion. Collections made behind the server's back
(``python -m service restore``) are opened on first use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from service.domain import validation
from service.domain.embeddings import Embeddings
from service.errors import Conflict, Forbidden, IndexGone, InvalidRequest, NotFound, Unavailable
from service.store.documents import (
    CollectionDeleted,
    CollectionRow,
    DocumentStore,
    DuplicateCollection,
    TooManyCollections,
)

if TYPE_CHECKING:
    from service.engine.engine import Engine

T = TypeVar("T")
log = logging.getLogger("service.collections")


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str | None
    dimension: int
    metric: str
    index: str
    count: int  # documents in SQL
    indexed: int  # vectors in the index
    created_at: datetime
    status: str  # ready | unavailable


async def to_the_end(work: Awaitable[T]) -> T:
    """Await ``work`` (a commit and the bookkeeping after it) to its end even if the caller is cancelled (a
    client that went away): it is never stopped between the two. The cancellation is raised afterwards."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def not_found(name: str) -> NotFound:
    return NotFound(f"No collection named `{name}`.", param="name", code="collection_not_found")


def _unavailable(name: str) -> Unavailable:
    return Unavailable(f"Collection `{name}` could not be opened (the server log says why); it answers 503 until "
                       "it is deleted.", retry_after=60, code="collection_unavailable")


class Collections:
    def __init__(self, store: DocumentStore, engine: Engine, embeddings: Embeddings, *,
                 quota: int | None = None) -> None:
        self.store = store
        self.engine = engine
        self.embeddings = embeddings
        self.quota = quota  # collections per tenant (None: no limit)
        self._rows: dict[tuple[str, str], CollectionRow] = {}
        self._writes: dict[int, asyncio.Lock] = {}
        self._admin = asyncio.Lock()  # create, open, delete

    async def using(self, tenant: str, name: str, work: Callable[[CollectionRow], Awaitable[T]], *,
                    ready: bool = True) -> T:
        """``work(row)`` on the collection ``name``, ready for searches and writes unless not ``ready`` is asked
        for (NotFound; Unavailable if it failed). If the row proves stale on the way (CollectionDeleted from SQL,
        IndexGone from the engine), it is looked up again and ``work`` runs once more, on the collection that has
        that name now."""
        for attempt in (1, 2):
            row = cached = self._rows.get((tenant, name))
            try:
                row = await self.get(tenant, name, ready=ready)
                return await work(row)
            except (CollectionDeleted, IndexGone) as exc:
                if row is not None:
                    self._forget(row)
                if attempt == 2:
                    raise not_found(name) if isinstance(exc, CollectionDeleted) else exc from None
            except InvalidRequest:
                # Checked against a cached definition (a vector's dimension, say) before SQL or the engine was
                # asked: refused only once SQL confirms that definition is still the collection's.
                if cached is None or await asyncio.to_thread(self.store.collection, cached.id) is not None:
                    raise
                self._forget(cached)
        raise AssertionError("unreachable")

    async def get(self, tenant: str, name: str, *, ready: bool = True) -> CollectionRow:
        """The collection named so, from the cache if it holds it (see ``using`` for when it proves stale);
        NotFound, or with ``ready`` Unavailable unless its index serves (a failed one)."""
        row = self._rows.get((tenant, name))
        if row is None:
            row = await asyncio.to_thread(self.store.get_collection, tenant, name)
            if row is None:
                raise not_found(name)
        if ready and await self._state(row) != "ready":
            raise _unavailable(name)
        self._rows[(tenant, name)] = row
        return row

    async def _state(self, row: CollectionRow) -> str:
        """The state of ``row``'s index, opened first if the engine has not (made behind the server's back);
        IndexGone if the engine finds no such collection in SQL."""
        state = await self.engine.index_state(row.id)
        if state is None:
            async with self._admin:
                await self.engine.open_index(row.id)
            state = await self.engine.index_state(row.id)
        return state or "failed"

    def _forget(self, row: CollectionRow) -> None:
        if self._rows.get((row.tenant, row.name)) == row:
            del self._rows[(row.tenant, row.name)]
        self._writes.pop(row.id, None)

    def write_lock(self, row: CollectionRow) -> asyncio.Lock:
        """Held across each write's SQL commit and index update: one write at a time, in write-log order."""
        return self._writes.setdefault(row.id, asyncio.Lock())

    async def create(self, tenant: str, name: str, *, model: str | None, dimension: int | None, metric: str,
                     index: str) -> CollectionInfo:
        validation.check_name(name)
        if model is not None:
            size = self.embeddings.dimension(model)
            dimension = dimension or size
            if not 1 <= dimension <= size:
                raise InvalidRequest(f"dimension must be between 1 and {size} for model `{model}`.",
                                     param="dimension")
        elif dimension is None:
            raise InvalidRequest("dimension is required for a collection without a model.", param="dimension")
        if not 1 <= dimension <= validation.MAX_DIMENSION:
            raise InvalidRequest(f"dimension must be between 1 and {validation.MAX_DIMENSION}.", param="dimension")
        validation.check_text(index, "index", param="index")
        if len(index) > validation.MAX_INDEX_LENGTH:
            raise InvalidRequest(f"index must be at most {validation.MAX_INDEX_LENGTH} characters.", param="index")
        try:
            self.engine.check_index(dimension, metric, index)
        except ValueError as exc:
            raise InvalidRequest(f"index: {exc}", param="index") from None
        row = await to_the_end(self._register(tenant, name, model, dimension, metric, index))
        return await self._info(row)

    async def _register(self, tenant: str, name: str, *args: Any) -> CollectionRow:
        async with self._admin:
            try:
                row = await asyncio.to_thread(self.store.create_collection, tenant, name, *args, quota=self.quota)
            except DuplicateCollection:
                raise Conflict(f"A collection named `{name}` already exists.", param="name",
                               code="collection_exists") from None
            except TooManyCollections:
                raise Forbidden(f"This tenant holds {self.quota} collections, its quota "
                                "(EMBEDSEARCH_MAX_COLLECTIONS): delete one first.", param="name",
                                code="collection_quota_exceeded") from None
            try:
                await self.engine.create_index(row.id)
            except BaseException:  # no index (Milvus refused it, say): no collection either
                await asyncio.to_thread(self.store.delete_collection, row.id)
                raise
            self._rows[(tenant, name)] = row
        return row

    async def describe(self, tenant: str, name: str) -> CollectionInfo:
        return await self.using(tenant, name, self._info)

    async def list(self, tenant: str, *, after: str | None = None, limit: int = validation.MAX_PAGE,
                   ) -> tuple[list[CollectionInfo], bool]:
        """The tenant's collections by name after ``after``, at most ``limit``, as SQL has them now: (page,
        has_more)."""
        if not 1 <= limit <= validation.MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {validation.MAX_PAGE}.", param="limit")
        rows = await asyncio.to_thread(self.store.all_collections, tenant, after=after, limit=limit + 1)
        infos = []
        for row in rows[:limit]:
            try:
                infos.append(await self._info(row))
            except (CollectionDeleted, IndexGone):  # deleted meanwhile
                self._forget(row)
                continue
            self._rows[(tenant, row.name)] = row
        return infos, len(rows) > limit

    async def _info(self, row: CollectionRow) -> CollectionInfo:
        ready = await self._state(row) == "ready"

        def counts() -> tuple[int, int]:
            return self.store.count(row.id), self.engine.indexed(row.id) if ready else 0

        count, indexed = await asyncio.to_thread(counts)
        return CollectionInfo(name=row.name, model=row.model, dimension=row.dimension, metric=row.metric,
                              index=row.index_factory, count=count, indexed=indexed, created_at=row.created_at,
                              status="ready" if ready else "unavailable")

    async def delete(self, tenant: str, name: str) -> None:
        """Delete a collection, its documents and its index (a failed one too: the way out for it)."""
        await to_the_end(self.using(tenant, name, self._drop, ready=False))

    async def _drop(self, row: CollectionRow) -> None:
        """Delete ``row`` from SQL (the delete itself), then drop its index. An engine that cannot be told now
        drops it by itself once it sees SQL without it (service/engine/engine.py ``_drop_deleted``); until then
        the index serves nobody, since every answer from it is checked against SQL."""
        async with self._admin, self.write_lock(row):
            await asyncio.to_thread(self.store.delete_collection, row.id)
            self._forget(row)
            try:
                await self.engine.drop_index(row.id)
            except Unavailable as exc:
                log.warning("collection %s/%s is deleted; its index is dropped once the engine is back (%s)",
                            row.tenant, row.name, exc.code)
