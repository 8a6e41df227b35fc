"""Collections: a tenant's named sets of documents, their definitions and the order of their writes.

The registry knows each collection's SQL row (its definition) and keeps one write lock per collection,
which service/domain/documents.py holds across a commit and its index write, so that the engine is
handed writes in write-log order. The engine owns the index; a collection whose index could not be
opened (service/engine/indexes.py) is *failed*: every request to it is a 503 but its deletion.
Collections made behind the server's back (``python -m service restore``) are opened on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from service.domain import validation
from service.domain.embeddings import Embeddings
from service.errors import Conflict, InvalidRequest, NotFound, Unavailable
from service.store.documents import CollectionRow, DocumentStore, DuplicateCollection

if TYPE_CHECKING:
    from service.engine.engine import Engine

T = TypeVar("T")


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
    def __init__(self, store: DocumentStore, engine: Engine, embeddings: Embeddings) -> None:
        self.store = store
        self.engine = engine
        self.embeddings = embeddings
        self._rows: dict[tuple[str, str], CollectionRow] = {}
        self._writes: dict[int, asyncio.Lock] = {}
        self._admin = asyncio.Lock()  # create, open, delete

    async def get(self, tenant: str, name: str) -> CollectionRow:
        """The collection, ready for searches and writes (NotFound; Unavailable if it failed)."""
        row = await self._row(tenant, name)
        state = await self.engine.index_state(row.id)
        if state is None:  # dropped by another HTTP worker since this one cached the row: look again
            if self._rows.get((tenant, name)) is row:
                del self._rows[(tenant, name)]
            row = await self._row(tenant, name)
            state = await self.engine.index_state(row.id)
        if state != "ready":
            raise _unavailable(name)
        return row

    async def _row(self, tenant: str, name: str) -> CollectionRow:
        row = self._rows.get((tenant, name))
        if row is None:
            row = await asyncio.to_thread(self.store.get_collection, tenant, name)
            if row is None:
                raise not_found(name)
            async with self._admin:
                if await self.engine.index_state(row.id) is None:  # made behind the server's back: open it now
                    await self.engine.open_index(row)
                self._rows[(tenant, name)] = row
        return row

    def write_lock(self, row: CollectionRow) -> asyncio.Lock:
        """Held across each write's SQL commit and index update: one write at a time, in write-log order."""
        return self._writes.setdefault(row.id, asyncio.Lock())

    def check_current(self, row: CollectionRow) -> None:
        """NotFound if ``row``'s collection was deleted (say while a write waited for its lock)."""
        if self._rows.get((row.tenant, row.name)) is not row:
            raise not_found(row.name)

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
                row = await asyncio.to_thread(self.store.create_collection, tenant, name, *args)
            except DuplicateCollection:
                raise Conflict(f"A collection named `{name}` already exists.", param="name",
                               code="collection_exists") from None
            try:
                await self.engine.create_index(row)
            except BaseException:  # no index (Milvus refused it, say): no collection either
                await asyncio.to_thread(self.store.delete_collection, row.id)
                raise
            self._rows[(tenant, name)] = row
        return row

    async def describe(self, tenant: str, name: str) -> CollectionInfo:
        return await self._info(await self.get(tenant, name))

    async def list(self, tenant: str) -> list[CollectionInfo]:
        rows = await asyncio.to_thread(self.store.all_collections, tenant)
        infos = []
        for row in sorted(rows, key=lambda r: r.name):
            try:
                infos.append(await self._info(await self._row(tenant, row.name)))
            except NotFound:  # deleted meanwhile
                pass
        return infos

    async def _info(self, row: CollectionRow) -> CollectionInfo:
        ready = await self.engine.index_state(row.id) == "ready"

        def counts() -> tuple[int, int]:
            return self.store.count(row.id), self.engine.indexed(row.id) if ready else 0

        count, indexed = await asyncio.to_thread(counts)
        return CollectionInfo(name=row.name, model=row.model, dimension=row.dimension, metric=row.metric,
                              index=row.index_factory, count=count, indexed=indexed, created_at=row.created_at,
                              status="ready" if ready else "unavailable")

    async def delete(self, tenant: str, name: str) -> None:
        """Delete a collection, its documents and its index (a failed one too: the way out for it)."""
        await to_the_end(self._drop(tenant, name))

    async def _drop(self, tenant: str, name: str) -> None:
        row = await self._row(tenant, name)
        async with self._admin, self.write_lock(row):
            self.check_current(row)
            await asyncio.to_thread(self.store.delete_collection, row.id)
            await self.engine.drop_index(row.id)
            del self._rows[(tenant, name)]
            self._writes.pop(row.id, None)
