"""SQL repository for collections and documents: the source of truth, vectors included.

A collection's id is never handed out twice (``new_collection_id``), so an id names one collection for
good: whoever holds a :class:`CollectionRow` (an HTTP worker's cache) can ask SQL whether that collection
still exists, and every read here by collection id does, raising :class:`CollectionDeleted` when it does
not, so a stale holder never answers for a collection that is gone, nor for another one.

Every document gets a fresh *position* when written (its FAISS id, called ``seq``); replacing or
deleting a document logs the old seq in ``removals`` under a position of its own. An index snapshot
taken at position P is brought up to date by removing the seqs logged after P and adding the
documents whose seq is above P. All methods are synchronous; callers run them in a worker thread.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import numpy as np
from sqlalchemy import Connection, ColumnElement, Engine, Text, and_, cast, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from service.store.filters import Filter, compile_filter
from service.store.tables import collections, documents, id_counters, index_positions, removals


@dataclass(frozen=True)
class CollectionRow:
    id: int
    tenant: str
    name: str
    model: str | None
    dimension: int
    metric: str
    index_factory: str
    last_position: int
    created_at: datetime


class CollectionDeleted(LookupError):
    """The collection of this id no longer exists (deleted through another HTTP worker or server, maybe made
    again under its name with a new id): nothing was read or written."""


class TooManyCollections(Exception):
    """The tenant holds its quota of collections already."""


@dataclass
class NewDocument:
    id: str
    text: str | None
    metadata: dict[str, Any]
    vector: np.ndarray


@dataclass(slots=True)
class StoredDocument:
    id: str
    seq: int
    text: str | None
    metadata_json: str  # the metadata object as JSON text, as stored: responses embed it without parsing
    vector: bytes


class DuplicateCollection(Exception):
    pass


@dataclass
class Changes:
    """What a collection's write log holds after a position: the seqs removed, the seqs added with their
    vectors and, when asked for, their texts and metadata."""

    removed: np.ndarray
    seqs: np.ndarray
    vectors: np.ndarray
    texts: list[str | None] | None = None
    metas: list[dict[str, Any]] | None = None


@dataclass
class IndexPosition:
    """An external index's recorded position, locked until the ``index_position`` block ends; setting
    ``position`` records a new one when the block ends without an error."""

    position: int


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: list[bytes], dimension: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dimension), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dimension).astype(np.float32)


# The metadata as JSON text (a plain cast on SQLite, jsonb::text on PostgreSQL): reading it never parses it.
_DOC_COLUMNS = (documents.c.id, documents.c.seq, documents.c.text, cast(documents.c.meta, Text).label("meta"),
                documents.c.vector)


def _document(row: Any) -> StoredDocument:
    return StoredDocument(id=row.id, seq=row.seq, text=row.text, metadata_json=row.meta, vector=row.vector)


def new_collection_id(conn: Connection) -> int:
    """The next collection id, above every one ever handed out (deleted ones too); the counter's row stays
    locked until ``conn``'s transaction ends, so creates take their turns. (Migration 0004 makes the row; a
    schema made otherwise gets it here, seeded above the ids in use.)"""
    take = update(id_counters).where(id_counters.c.name == "collections").values(
        last=id_counters.c.last + 1).returning(id_counters.c.last)
    last = conn.execute(take).scalar_one_or_none()
    if last is None:
        highest = select(func.coalesce(func.max(collections.c.id), 0)).scalar_subquery()
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(dialect_insert(id_counters).values(name="collections", last=highest).on_conflict_do_nothing())
        last = conn.execute(take).scalar_one()
    return last


def _exists(conn: Connection, collection_id: int) -> None:
    """CollectionDeleted unless the collection exists. Run after a read on the same connection: ids are never
    reused, so a collection there now was there for the read too."""
    if conn.execute(select(collections.c.id).where(collections.c.id == collection_id)).first() is None:
        raise CollectionDeleted(collection_id)


class DocumentStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._by_seqs_cache: dict[int, str] = {}  # statements by number of seqs, for the common sizes

    def _where(self, collection_id: int, filter: Filter | None = None, *, ids: list[str] | None = None,
               after_seq: int | None = None) -> ColumnElement[bool]:
        """The documents of a collection matching ``filter`` (a parsed one, see filters.py), among ``ids``
        if given, with seqs above ``after_seq`` if given."""
        where = documents.c.collection_id == collection_id
        if filter is not None:
            where = and_(where, compile_filter(filter, documents.c.meta, self.dialect))
        if ids is not None:
            where = and_(where, documents.c.id.in_(ids))
        if after_seq is not None:
            where = and_(where, documents.c.seq > after_seq)
        return where

    # -- collections -------------------------------------------------------------------------
    def create_collection(
        self, tenant: str, name: str, model: str | None, dimension: int, metric: str, index_factory: str,
        *, quota: int | None = None,
    ) -> CollectionRow:
        """A new collection with an id never used before (DuplicateCollection if the tenant has one of that name,
        TooManyCollections if it holds ``quota`` already)."""
        try:
            with self.engine.begin() as conn:
                collection_id = new_collection_id(conn)  # locks the counter: the count below is the tenant's now
                if quota is not None and conn.execute(select(func.count()).select_from(collections).where(
                        collections.c.tenant == tenant)).scalar_one() >= quota:
                    raise TooManyCollections(quota)
                conn.execute(
                    insert(collections).values(
                        id=collection_id, tenant=tenant, name=name, model=model, dimension=dimension, metric=metric,
                        index_factory=index_factory,
                    )
                )
        except IntegrityError:
            raise DuplicateCollection(name) from None
        row = self.collection(collection_id)
        assert row is not None
        return row

    def get_collection(self, tenant: str, name: str) -> CollectionRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(collections).where(collections.c.tenant == tenant, collections.c.name == name)
            ).first()
        return CollectionRow(**row._mapping) if row else None

    def collection(self, collection_id: int) -> CollectionRow | None:
        """The collection of this id, as SQL has it now (None: there is none, or no longer)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(collections).where(collections.c.id == collection_id)).first()
        return CollectionRow(**row._mapping) if row else None

    def all_collections(self, tenant: str | None = None, *, after: str | None = None,
                        limit: int | None = None) -> list[CollectionRow]:
        """Every collection (by id), or a tenant's by name: those named after ``after``, at most ``limit``."""
        query = select(collections)
        if tenant is None:
            query = query.order_by(collections.c.id)
        else:
            query = query.where(collections.c.tenant == tenant).order_by(collections.c.name)
            if after is not None:
                query = query.where(collections.c.name > after)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [CollectionRow(**row._mapping) for row in conn.execute(query)]

    def delete_collection(self, collection_id: int) -> None:
        """Delete the collection and everything in it (CollectionDeleted if it was gone already)."""
        with self.engine.begin() as conn:
            self._lock(conn, collection_id)
            conn.execute(delete(removals).where(removals.c.collection_id == collection_id))
            conn.execute(delete(index_positions).where(index_positions.c.collection_id == collection_id))
            conn.execute(delete(documents).where(documents.c.collection_id == collection_id))
            conn.execute(delete(collections).where(collections.c.id == collection_id))

    def has_text(self, collection_id: int) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(select(documents.c.seq).where(
                documents.c.collection_id == collection_id, documents.c.text.is_not(None)).limit(1)).first()
            _exists(conn, collection_id)
        return found is not None

    def count(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            n = conn.execute(
                select(func.count()).select_from(documents).where(documents.c.collection_id == collection_id)
            ).scalar_one()
            _exists(conn, collection_id)
        return n

    # -- writes ------------------------------------------------------------------------------
    @staticmethod
    def _lock(conn: Connection, collection_id: int) -> None:
        """Lock the collection's row for this transaction before it reads what it will replace or delete: a
        concurrent writer (another HTTP worker or server) has then committed, so the seqs read are the ones
        deleted (else PostgreSQL's DELETE would remove a row the concurrent writer had just put there, while
        the removal log named the seq it had read before)."""
        if conn.execute(update(collections).where(collections.c.id == collection_id)
                        .values(last_position=collections.c.last_position)).rowcount == 0:
            raise CollectionDeleted(collection_id)

    @staticmethod
    def _take_positions(conn: Connection, collection_id: int, n: int) -> int:
        """Reserve ``n`` positions; returns the first. The row update also serialises writers."""
        last = conn.execute(
            update(collections)
            .where(collections.c.id == collection_id)
            .values(last_position=collections.c.last_position + n)
            .returning(collections.c.last_position)
        ).scalar_one_or_none()
        if last is None:
            raise CollectionDeleted(collection_id)
        return last - n + 1

    @staticmethod
    def _remove(conn: Connection, collection_id: int, where: ColumnElement[bool]) -> tuple[np.ndarray, int | None]:
        """Delete the documents ``where`` selects and log their seqs; returns (removed seqs, last position used)."""
        # No ORDER BY: SQLite would then walk the (collection_id, seq) index, a scan of the whole
        # collection, instead of looking ids up in the primary key (216 ms vs 1.4 ms at 100k rows).
        seqs = sorted(r.seq for r in conn.execute(select(documents.c.seq).where(where)))
        if not seqs:
            return np.zeros(0, dtype=np.int64), None
        first = DocumentStore._take_positions(conn, collection_id, len(seqs))
        conn.execute(
            insert(removals),
            [{"collection_id": collection_id, "position": first + i, "seq": s} for i, s in enumerate(seqs)],
        )
        conn.execute(delete(documents).where(where))
        return np.array(seqs, dtype=np.int64), first + len(seqs) - 1

    def upsert(self, collection_id: int, docs: list[NewDocument]) -> tuple[np.ndarray, np.ndarray]:
        """Write ``docs`` in one transaction; returns (their new seqs, the seqs they replaced).

        The last new seq is also the collection's last position."""
        with self.engine.begin() as conn:
            self._lock(conn, collection_id)
            replaced, _ = self._remove(conn, collection_id, self._where(collection_id, ids=[d.id for d in docs]))
            first = self._take_positions(conn, collection_id, len(docs))
            seqs = np.arange(first, first + len(docs), dtype=np.int64)
            conn.execute(
                insert(documents),
                [
                    {"collection_id": collection_id, "id": d.id, "seq": int(s), "text": d.text,
                     "meta": d.metadata, "vector": to_blob(d.vector)}
                    for d, s in zip(docs, seqs)
                ],
            )
        return seqs, replaced

    def delete(self, collection_id: int, *, ids: list[str] | None = None,
               filter: Filter | None = None) -> tuple[np.ndarray, int | None]:
        """Delete the documents with ``ids`` and/or matching ``filter``: (their seqs, the last position used,
        None if nothing was deleted)."""
        with self.engine.begin() as conn:
            self._lock(conn, collection_id)
            return self._remove(conn, collection_id, self._where(collection_id, filter, ids=ids))

    # -- reads -------------------------------------------------------------------------------
    def get(self, collection_id: int, doc_id: str) -> StoredDocument | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_DOC_COLUMNS).where(documents.c.collection_id == collection_id, documents.c.id == doc_id)
            ).first()
            _exists(conn, collection_id)
        return _document(row) if row else None

    def by_ids(self, collection_id: int, ids: list[str]) -> list[StoredDocument]:
        with self.engine.connect() as conn:
            found = [_document(r) for r in conn.execute(select(*_DOC_COLUMNS).where(self._where(collection_id, ids=ids)))]
            _exists(conn, collection_id)
        return found

    def page(self, collection_id: int, filter: Filter | None, after: str | None, limit: int) -> list[StoredDocument]:
        query = select(*_DOC_COLUMNS).where(self._where(collection_id, filter))
        if after is not None:
            query = query.where(documents.c.id > after)
        with self.engine.connect() as conn:
            found = [_document(r) for r in conn.execute(query.order_by(documents.c.id).limit(limit))]
            _exists(conn, collection_id)
        return found

    def by_seqs(self, collection_id: int, seqs: list[int]) -> dict[int, StoredDocument]:
        """The documents of a search's hits, by seq (CollectionDeleted if the collection is gone, hits or none).
        Every search runs this, so it goes straight to the driver with plain SQL (a third of the time of a
        SQLAlchemy statement), through the same pool and its checks (service/store/db.py)."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            rows = []
            if seqs:
                cursor.execute(self._by_seqs_sql(len(seqs), mark), (collection_id, *seqs))
                rows = cursor.fetchall()
            cursor.execute(f"SELECT 1 FROM collections WHERE id = {mark}", (collection_id,))
            exists = cursor.fetchone() is not None
            cursor.close()
        finally:
            connection.close()
        if not exists:
            raise CollectionDeleted(collection_id)
        return {seq: StoredDocument(doc_id, seq, text, meta, vector) for doc_id, seq, text, meta, vector in rows}

    def _by_seqs_sql(self, n: int, mark: str) -> str:
        sql = self._by_seqs_cache.get(n)
        if sql is None:
            sql = (f"SELECT id, seq, text, CAST(meta AS TEXT), vector FROM documents WHERE collection_id = {mark} "
                   f"AND seq IN ({', '.join([mark] * n)})")
            if n <= 256:
                self._by_seqs_cache[n] = sql
        return sql

    def seqs_matching(self, collection_id: int, filter: Filter | None, after: int | None = None) -> np.ndarray:
        """Seqs of the documents matching ``filter`` (only those above ``after``, if given)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(documents.c.seq).where(self._where(collection_id, filter, after_seq=after)))
            return np.fromiter((r.seq for r in rows), dtype=np.int64)

    def all_seqs(self, collection_id: int) -> np.ndarray:
        return self.seqs_matching(collection_id, None)

    # -- index maintenance -------------------------------------------------------------------
    def changes_since(self, collection_id: int, position: int, dimension: int, until: int | None = None, *,
                      documents_too: bool = False) -> Changes:
        """What was removed and added after ``position`` (up to ``until`` if given); with ``documents_too``, the
        added documents' texts and metadata as well."""
        removal_range = [removals.c.collection_id == collection_id, removals.c.position > position]
        document_range = [documents.c.collection_id == collection_id, documents.c.seq > position]
        if until is not None:
            removal_range.append(removals.c.position <= until)
            document_range.append(documents.c.seq <= until)
        columns = [documents.c.seq, documents.c.vector]
        if documents_too:
            columns += [documents.c.text, documents.c.meta]
        with self.engine.connect() as conn:
            removed = np.fromiter(conn.execute(select(removals.c.seq).where(*removal_range)).scalars(), dtype=np.int64)
            rows = conn.execute(select(*columns).where(*document_range)).all()
        changes = Changes(removed, np.array([r.seq for r in rows], dtype=np.int64),
                          from_blobs([r.vector for r in rows], dimension))
        if documents_too:
            changes.texts, changes.metas = [r.text for r in rows], [r.meta for r in rows]
        return changes

    def last_position(self, collection_id: int) -> int | None:
        """The collection's last write-log position as committed (None: the collection is gone)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(collections.c.last_position).where(collections.c.id == collection_id)
            ).scalar_one_or_none()

    def iter_vectors(self, collection_id: int, dimension: int, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (seqs, vectors) of a collection, in chunks, for a rebuild."""
        for rows in self._in_seq_order(collection_id, documents.c.vector, chunk=chunk):
            yield np.array([r.seq for r in rows], dtype=np.int64), from_blobs([r.vector for r in rows], dimension)

    def iter_texts(self, collection_id: int, chunk: int = 10_000) -> Iterator[tuple[list[int], list[str]]]:
        """Every (seqs, texts) of a collection's documents that have text, in chunks, for its keyword index."""
        for rows in self._in_seq_order(collection_id, documents.c.text, documents.c.text.is_not(None), chunk=chunk):
            yield [r.seq for r in rows], [r.text for r in rows]

    def _in_seq_order(self, collection_id: int, column: Any, *where: ColumnElement[bool],
                      chunk: int) -> Iterator[list[Any]]:
        """A collection's rows (seq and ``column``) matching ``where``, in seq order, ``chunk`` at a time."""
        after = -1
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(documents.c.seq, column)
                    .where(documents.c.collection_id == collection_id, documents.c.seq > after, *where)
                    .order_by(documents.c.seq)
                    .limit(chunk)
                ).all()
            if not rows:
                return
            after = rows[-1].seq
            yield rows

    def prune_removals(self, collection_id: int, position: int) -> None:
        """Forget removals an index snapshot at ``position`` already reflects."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(removals).where(and_(removals.c.collection_id == collection_id, removals.c.position <= position))
            )

    @contextmanager
    def index_position(self, collection_id: int) -> Iterator[IndexPosition]:
        """The position an external index (Milvus) has recorded for a collection (0 when none yet), with its row
        locked (``SELECT ... FOR UPDATE``) until the block ends: whoever holds it is the one server applying
        writes to that index, so they arrive in write-log order. A new ``position`` is recorded at the end."""
        where = index_positions.c.collection_id == collection_id
        locked = select(index_positions.c.position).where(where).with_for_update()
        with self.engine.begin() as conn:
            recorded = conn.execute(locked).scalar_one_or_none()
            if recorded is None:  # the first time: another server may be adding the row too
                insert_new = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(index_positions)
                conn.execute(insert_new.values(collection_id=collection_id, position=0).on_conflict_do_nothing())
                recorded = conn.execute(locked).scalar_one()
            held = IndexPosition(recorded)
            yield held
            if held.position != recorded:
                conn.execute(update(index_positions).where(where).values(position=held.position))
