"""Search: queries (texts embedded by the collection's model, or vectors) in, ranked documents out.

The plan of a search: bound its work and answer first (validation.py), embed text queries, have the
engine find the top ``k`` seqs among the documents the filter allows (an exact top-k: see
service/engine/indexes.py), then fetch those documents from SQL, in one worker-thread hop. A write
that lands between the two may have replaced or removed a hit; then the search runs again (the
index has the write by then), so an answer never holds a hole where a hit was.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import numpy as np

from service.domain import validation
from service.domain.collections import Collections
from service.domain.documents import Documents
from service.engine.engine import Engine
from service.errors import InvalidRequest
from service.store.documents import CollectionRow, DocumentStore, StoredDocument
from service.store.filters import Filter, parse_filter

RETRIES = 3  # searches again when a hit's document was replaced meanwhile


@dataclass(frozen=True)
class Query:
    """One search: exactly one of ``texts`` and ``vectors``; ``field`` names it in errors (query, vector,
    queries or vectors)."""

    field: str
    texts: list[str] | None = None
    vectors: list | None = None
    top_k: int = 10
    filter: object = None  # as sent: validated here
    include: frozenset[str] = frozenset({"text", "metadata"})
    min_score: float | None = None


@dataclass
class Hit:
    score: float
    document: StoredDocument


@dataclass
class Found:
    hits: list[list[Hit]]  # one list per query, best first
    tokens: int  # embedded for text queries


class Search:
    def __init__(self, store: DocumentStore, engine: Engine, collections: Collections, documents: Documents) -> None:
        self.store = store
        self.engine = engine
        self.collections = collections
        self.documents = documents

    async def search(self, tenant: str, name: str, query: Query) -> Found:
        row = await self.collections.get(tenant, name)
        items = query.texts if query.texts is not None else query.vectors
        validation.check_count(items, query.field)
        validation.check_search_size(len(items), query.top_k, "vector" in query.include, row)
        if query.min_score is not None and not math.isfinite(query.min_score):
            raise InvalidRequest("min_score must be a finite number.", param="min_score")
        names = [query.field] if len(items) == 1 and query.field in ("query", "vector") else [
            f"{query.field}[{i}]" for i in range(len(items))]
        tokens = 0
        if query.texts is not None:
            if row.model is None:
                raise InvalidRequest(f"Collection `{name}` has no model: search it with vector or vectors.",
                                     param=query.field)
            for text, where in zip(query.texts, names):
                if not text:
                    raise InvalidRequest(f"{where} must not be empty.", param=query.field)
            queries, tokens = await self.documents.embed(row, query.texts, "query", query.field, names)
        else:
            queries = np.stack([validation.vector(v, row, where, query.field) for v, where in zip(items, names)])
        parsed = parse_filter(query.filter) if query.filter is not None else None
        hits = await asyncio.to_thread(self._run, row, queries, query, parsed)
        return Found(hits, tokens)

    def _run(self, row: CollectionRow, queries: np.ndarray, query: Query, parsed: Filter | None) -> list[list[Hit]]:
        """Index search and SQL fetch (in a worker thread), until every hit's document is still there."""
        for _ in range(RETRIES):
            scores, seqs = self.engine.search(row.id, queries, query.top_k, parsed, query.filter)
            wanted = sorted({int(s) for s in seqs.ravel() if s >= 0})
            found = self.store.by_seqs(row.id, wanted)
            if len(found) == len(wanted):
                break
        validation.check_response_size(found.values(), "top_k", text="text" in query.include,
                                       metadata="metadata" in query.include)
        return [_ranked(score_row, seq_row, found, row.metric == "l2", query.min_score)
                for score_row, seq_row in zip(scores, seqs)]


def _ranked(scores: np.ndarray, seqs: np.ndarray, found: dict[int, StoredDocument], lower_is_better: bool,
            min_score: float | None) -> list[Hit]:
    """One query's hits: above ``min_score`` (below it for l2), best first, ties by age (seq)."""
    pairs = [(float(score), int(seq)) for score, seq in zip(scores, seqs) if seq >= 0 and int(seq) in found]
    if min_score is not None:
        pairs = [(s, q) for s, q in pairs if (s <= min_score if lower_is_better else s >= min_score)]
    pairs.sort(key=lambda p: (p[0] if lower_is_better else -p[0], p[1]))
    return [Hit(score, found[seq]) for score, seq in pairs]
