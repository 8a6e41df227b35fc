"""Documents: the one place that decides the order of SQL and index writes.

Order of a write: validate everything, embed texts (outside any lock), then under the collection's
write lock commit to SQL (the source of truth: vectors included) and hand the same change to the
engine, which applies it to the index. The client hears back only after the commit, so an
acknowledged write survives a crash; a commit and its index update run to the end together even if
the client goes away. The index on disk is a snapshot tagged with the write-log position it reflects
(service/engine/snapshots.py); on start it is brought up to date from SQL (service/engine/recovery.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from service.domain import validation
from service.domain.collections import Collections, to_the_end
from service.domain.embeddings import Embeddings, truncate_dimensions
from service.engine.indexes import Write
from service.errors import IndexGone, InvalidRequest, NotFound, Unavailable
from service.store.documents import CollectionRow, DocumentStore, NewDocument, StoredDocument
from service.store.filters import parse_filter

if TYPE_CHECKING:
    from service.engine.engine import Engine

T = TypeVar("T")
log = logging.getLogger("service.documents")


def _no_document(doc_id: str, name: str) -> NotFound:
    return NotFound(f"No document with id `{doc_id}` in `{name}`.", param="id", code="document_not_found")


class Documents:
    def __init__(self, store: DocumentStore, engine: Engine, collections: Collections, embeddings: Embeddings) -> None:
        self.store = store
        self.engine = engine
        self.collections = collections
        self.embeddings = embeddings

    async def embed(self, row: CollectionRow, texts: list[str], purpose: str, param: str,
                    names: list[str]) -> tuple[np.ndarray, int]:
        """Texts embedded by the collection's model, cut to its dimension (Matryoshka): (vectors, tokens).
        ``names`` name the texts in errors. The tenant shares the encoder fairly with the others."""
        vectors, tokens = await self.embeddings.embed_texts(row.model, texts, purpose=purpose, param=param,
                                                            key=row.tenant)
        if row.dimension < vectors.shape[1]:
            vectors = truncate_dimensions(vectors, row.dimension)
        validation.check_embedded(vectors, row, names, param)
        return vectors, tokens

    # -- writes ------------------------------------------------------------------------------
    async def upsert(self, tenant: str, name: str,
                     items: Sequence[validation.DocumentInput]) -> tuple[list[str], int]:
        """Insert or replace documents, all or nothing: (their ids, tokens embedded)."""
        return await self.collections.using(tenant, name, lambda row: self._upsert(row, items))

    async def _upsert(self, row: CollectionRow, items: Sequence[validation.DocumentInput]) -> tuple[list[str], int]:
        docs = validation.documents(items, row)
        tokens = 0
        to_embed = [i for i, d in enumerate(docs) if d.vector is None]
        if to_embed:
            vectors, tokens = await self.embed(row, [docs[i].text for i in to_embed], "document", "documents",
                                               [f"documents[{i}].text" for i in to_embed])
            for i, vector in zip(to_embed, vectors):
                docs[i].vector = vector
        await self._write(row, lambda: self._upsert_now(row, docs))
        return [d.id for d in docs], tokens

    def _upsert_now(self, row: CollectionRow, docs: list[NewDocument]) -> tuple[Write, None]:
        seqs, replaced = self.store.upsert(row.id, docs)
        vectors = np.stack([d.vector for d in docs]).astype(np.float32, copy=False)
        return Write(int(seqs[-1]), replaced, seqs, vectors, [d.text for d in docs], [d.metadata for d in docs]), None

    async def delete(self, tenant: str, name: str, doc_id: str) -> None:
        validation.check_text(doc_id, "id", param="id")
        if await self.collections.using(tenant, name, lambda row: self._delete(row, [doc_id], None)) == 0:
            raise _no_document(doc_id, name)

    async def delete_many(self, tenant: str, name: str, ids: list[str] | None, filter: object) -> int:
        """Delete the documents with these ids, or matching this filter, or both (ids that also match)."""
        if ids is None and filter is None:
            raise InvalidRequest("Give ids, a filter, or both (`\"filter\": {}` deletes every document).",
                                 param="ids")
        if ids is not None:
            if len(ids) > validation.MAX_DELETE_IDS:
                raise InvalidRequest(f"At most {validation.MAX_DELETE_IDS} ids per call.", param="ids")
            for i, doc_id in enumerate(ids):
                validation.check_text(doc_id, f"ids[{i}]", param="ids")
        parsed = parse_filter(filter) if filter is not None else None
        return await self.collections.using(tenant, name, lambda row: self._delete(row, ids, parsed))

    async def _delete(self, row: CollectionRow, ids: list[str] | None, filter: object) -> int:
        def delete_now() -> tuple[Write | None, int]:
            removed, position = self.store.delete(row.id, ids=ids, filter=filter)
            return (Write(position, removed) if position is not None else None), len(removed)

        return await self._write(row, delete_now)

    async def _write(self, row: CollectionRow, commit: Callable[[], tuple[Write | None, T]]) -> T:
        """Run ``commit`` (an SQL transaction) and apply the write it made to the index, in a worker thread,
        under the collection's write lock, to the end even if the client goes away. CollectionDeleted (nothing
        written) if the collection is gone by then."""
        async with self.collections.write_lock(row):
            return await to_the_end(asyncio.to_thread(self._commit_and_apply, row, commit))

    def _commit_and_apply(self, row: CollectionRow, commit: Callable[[], tuple[Write | None, T]]) -> T:
        """Once committed, a write is answered as done: an engine that cannot take it now (restarting, or past
        its deadline) finds it in SQL (service/engine/client.py ``apply``), and one whose collection was deleted
        right after the commit has nothing left to apply it to."""
        write, result = commit()
        if write is not None:
            try:
                self.engine.apply(row.id, write)
            except IndexGone:
                pass
            except Unavailable as exc:
                log.warning("collection %s/%s: a committed write (position %d) waits for the engine (%s)",
                            row.tenant, row.name, write.position, exc.code)
        return result

    # -- reads -------------------------------------------------------------------------------
    async def get(self, tenant: str, name: str, doc_id: str) -> StoredDocument:
        validation.check_text(doc_id, "id", param="id")  # PostgreSQL cannot even compare a string holding NUL
        doc = await self.collections.using(tenant, name, lambda row: asyncio.to_thread(self.store.get, row.id, doc_id))
        if doc is None:
            raise _no_document(doc_id, name)
        return doc

    async def get_many(self, tenant: str, name: str, ids: list[str], with_vectors: bool) -> list[StoredDocument]:
        """The documents with these ids, in their order; ids with no document are left out."""
        return await self.collections.using(tenant, name, lambda row: self._get_many(row, ids, with_vectors))

    async def _get_many(self, row: CollectionRow, ids: list[str], with_vectors: bool) -> list[StoredDocument]:
        if not 1 <= len(ids) <= validation.MAX_PAGE:
            raise InvalidRequest(f"Give 1 to {validation.MAX_PAGE} ids per call.", param="ids")
        if with_vectors and len(ids) * row.dimension > validation.MAX_RESPONSE_VALUES:
            raise InvalidRequest(f"{len(ids)} ids x dimension {row.dimension} vector values are more than "
                                 f"{validation.MAX_RESPONSE_VALUES} in one response: ask for fewer ids, or leave "
                                 "`vector` out of include.", param="include")
        for i, doc_id in enumerate(ids):
            validation.check_text(doc_id, f"ids[{i}]", param="ids")
        found = {d.id: d for d in await asyncio.to_thread(self.store.by_ids, row.id, list(set(ids)))}
        docs = [found[doc_id] for doc_id in ids if doc_id in found]
        validation.check_response_size(docs, "ids", text=True, metadata=True)
        return docs

    async def page(self, tenant: str, name: str, *, limit: int, after: str | None,
                   filter: object) -> tuple[list[StoredDocument], bool]:
        """Documents in id order after ``after``, at most ``limit``, matching ``filter``: (page, has_more)."""
        if not 1 <= limit <= validation.MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {validation.MAX_PAGE}.", param="limit")
        parsed = parse_filter(filter) if filter is not None else None
        docs = await self.collections.using(
            tenant, name, lambda row: asyncio.to_thread(self.store.page, row.id, parsed, after, limit + 1))
        validation.check_response_size(docs[:limit], "limit", text=True, metadata=True)
        return docs[:limit], len(docs) > limit
