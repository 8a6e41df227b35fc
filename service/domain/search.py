"""Search: queries (texts embedded by the collection's model, or vectors) in, ranked documents out.

The plan of a search: bound its work and answer first (validation.py), embed text queries, then have
the engine find the top ``k`` seqs among the documents the filter allows (an exact top-k: see
service/engine/indexes.py) and fetch those documents from SQL, in one worker-thread hop. Concurrent
searches of one collection are merged into that hop (merging.py): those with the same ``k`` and filter
share one index call, and all their hits are read in one SQL query; each answer is the one it would
have alone. A write that lands between the index call and the fetch may have replaced or removed a
hit; then the index is asked again (it has the write by then), so an answer never holds a hole where
a hit was.

Keyword and hybrid searches (``mode``) add the collection's BM25 index (index/keywords.py, in the
engine): keyword mode asks it alone; hybrid mode asks both indexes for their top ``candidates``
(the dense call merged with concurrent hybrid searches' like dense searches are) and fuses the two
rankings (fusion.py), then fetches only the fused hits.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from service.domain import validation
from service.domain.collections import Collections
from service.domain.documents import Documents
from service.domain.fusion import Fused, Fusion, Ranked, branch, fuse
from service.domain.merging import Merger
from service.engine.allowed import filter_key
from service.errors import InvalidRequest
from service.store.documents import CollectionRow, DocumentStore, StoredDocument
from service.store.filters import Filter, parse_filter

if TYPE_CHECKING:
    from service.engine.engine import Engine

RETRIES = 3  # asks the index again when a hit's document was replaced meanwhile


@dataclass(frozen=True)
class Query:
    """One search: exactly one of ``texts`` and ``vectors``; ``field`` names it in errors (query, vector,
    queries or vectors). ``mode``: dense (vectors), keyword (BM25 over the texts: ``keyword``, else the
    text queries) or hybrid (both, fused as ``fusion`` says)."""

    field: str
    texts: list[str] | None = None
    vectors: list | None = None
    top_k: int = 10
    filter: object = None  # as sent: validated here
    include: frozenset[str] = frozenset({"text", "metadata"})
    min_score: float | None = None
    mode: str = "dense"
    keyword: str | None = None
    fusion: Fusion = Fusion()
    explain: bool = False


@dataclass
class Hit:
    score: float
    document: StoredDocument
    # with explain: the hit's (rank, score) in each branch it came from
    dense: Ranked | None = None
    keyword: Ranked | None = None


@dataclass
class Found:
    hits: list[list[Hit]]  # one list per query, best first
    tokens: int  # embedded for text queries


@dataclass(eq=False)
class _Planned:
    """A search ready for the index: its query vectors and parsed filter."""

    row: CollectionRow
    vectors: np.ndarray
    query: Query
    filter: Filter | None

    @property
    def group(self) -> tuple[int, bytes | None]:
        """Searches in one group share an index call: the same k and the same filter."""
        return self.query.top_k, None if self.filter is None else filter_key(self.query.filter)


class Search:
    def __init__(self, store: DocumentStore, engine: Engine, collections: Collections, documents: Documents) -> None:
        self.store = store
        self.engine = engine
        self.collections = collections
        self.documents = documents
        self._merged: Merger[_Planned] = Merger(self._run)
        self._merged_index: Merger[_Planned] = Merger(lambda _, planned: self._index_calls(planned))  # no SQL

    async def search(self, tenant: str, name: str, query: Query) -> Found:
        return await self.collections.using(tenant, name, lambda row: self._search(row, query))

    async def _search(self, row: CollectionRow, query: Query) -> Found:
        name = row.name
        items = query.texts if query.texts is not None else query.vectors
        validation.check_count(items, query.field)
        validation.check_search_size(len(items), query.top_k, "vector" in query.include, row)
        if query.min_score is not None and not math.isfinite(query.min_score):
            raise InvalidRequest("min_score must be a finite number.", param="min_score")
        names = [query.field] if len(items) == 1 and query.field in ("query", "vector") else [
            f"{query.field}[{i}]" for i in range(len(items))]
        if query.texts is not None:
            for text, where in zip(query.texts, names):
                if not text:
                    raise InvalidRequest(f"{where} must not be empty.", param=query.field)
        keywords = _keywords(query) if query.mode != "dense" else None
        if query.mode == "hybrid":
            validation.check_fusion(query.fusion, query.top_k, len(items))
        tokens = 0
        vectors = None
        if query.mode != "keyword":
            if query.texts is not None:
                if row.model is None:
                    raise InvalidRequest(f"Collection `{name}` has no model: search it with vector or vectors"
                                         + (", or with mode keyword." if query.mode == "dense" else
                                            " and keyword."), param=query.field)
                vectors, tokens = await self.documents.embed(row, query.texts, "query", query.field, names)
            else:
                vectors = np.stack([validation.vector(v, row, where, query.field) for v, where in zip(items, names)])
        parsed = parse_filter(query.filter) if query.filter is not None else None
        if keywords is None:
            hits = await self._merged.submit(row.id, _Planned(row, vectors, query, parsed))
        else:
            hits = await self._keyword_or_hybrid(row, vectors, keywords, query, parsed)
        return Found(hits, tokens)

    async def _keyword_or_hybrid(self, row: CollectionRow, vectors: np.ndarray | None, keywords: list[str],
                                 query: Query, parsed: Filter | None) -> list[list[Hit]]:
        """A keyword or hybrid search: the dense branch's index call merged with concurrent searches of the
        collection (as dense searches are), the keyword branch and the fusion in a worker thread, then one
        SQL fetch of the fused hits; again until every hit's document is still there (as ``_run``)."""
        dense_plan = None
        if query.mode == "hybrid":
            dense_query = replace(query, top_k=query.fusion.candidates, min_score=None, mode="dense")
            dense_plan = _Planned(row, vectors, dense_query, parsed)
        for _ in range(RETRIES):
            dense = await self._merged_index.submit(row.id, dense_plan) if dense_plan is not None else None
            hits, complete = await asyncio.to_thread(self._fused, row, dense, keywords, query, parsed)
            if complete:
                break
        return hits

    def _fused(self, row: CollectionRow, dense: tuple[np.ndarray, np.ndarray] | None, keywords: list[str],
               query: Query, parsed: Filter | None) -> tuple[list[list[Hit]], bool]:
        """The keyword branch, fused with the dense branch's answer if any, and its documents: (the hits of
        each query, whether every document was still there)."""
        k = query.fusion.candidates if dense is not None else query.top_k
        keyword_rows = zip(*self.engine.keyword_search(row.id, keywords, k, parsed, query.filter))
        if dense is not None:
            ranked = [fuse(branch(*d), branch(*w), query.fusion, row.metric == "l2", query.top_k)
                      for d, w in zip(zip(*dense), keyword_rows)]
        else:
            ranked = [[Fused(seq, r.score, keyword=r) for seq, r in branch(*w).items()] for w in keyword_rows]
        wanted = sorted({hit.seq for hits in ranked for hit in hits})
        documents = self.store.by_seqs(row.id, wanted)
        if not wanted and not self.store.has_text(row.id) and self.store.count(row.id):
            raise InvalidRequest(f"Collection `{row.name}` holds no text to search by keyword: its documents "
                                 "are vectors alone.", param="mode", code="no_text")
        validation.check_response_size(documents.values(), "top_k", text="text" in query.include,
                                       metadata="metadata" in query.include)
        hits = [[Hit(hit.score, documents[hit.seq], hit.dense, hit.keyword) for hit in hits
                 if hit.seq in documents and (query.min_score is None or hit.score >= query.min_score)]
                for hits in ranked]
        return hits, len(documents) == len(wanted)

    def _run(self, _: Hashable, planned: list[_Planned]) -> list[list[list[Hit]] | Exception]:
        """Merged searches of one collection (in a worker thread): index calls by group, one SQL fetch,
        again until every hit's document is still there; each search's hits, or its own error."""
        for _ in range(RETRIES):
            found_seqs = self._index_calls(planned)
            seqs = [answer[1].ravel() for answer in found_seqs if not isinstance(answer, Exception)]
            wanted = np.unique(np.concatenate(seqs)).tolist() if seqs else []
            if wanted and wanted[0] < 0:  # -1: fewer hits than top_k
                wanted = wanted[1:]
            documents = self.store.by_seqs(planned[0].row.id, wanted)
            if len(documents) == len(wanted):
                break
        return [answer if isinstance(answer, Exception) else _answer(plan, *answer, documents)
                for plan, answer in zip(planned, found_seqs)]

    def _index_calls(self, planned: list[_Planned]) -> list[tuple[np.ndarray, np.ndarray] | Exception]:
        """(scores, seqs) of each search, one index call per group of searches."""
        groups: dict[tuple[int, bytes | None], list[int]] = {}
        for i, plan in enumerate(planned):
            groups.setdefault(plan.group, []).append(i)
        answers: list[tuple[np.ndarray, np.ndarray] | Exception] = [None] * len(planned)  # type: ignore[list-item]
        for members in groups.values():
            first = planned[members[0]]
            vectors = first.vectors if len(members) == 1 else np.concatenate([planned[i].vectors for i in members])
            try:
                scores, seqs = self.engine.search(first.row.id, vectors, first.query.top_k, first.filter,
                                                  first.query.filter)
            except Exception as exc:
                for i in members:
                    answers[i] = exc
                continue
            start = 0
            for i in members:
                stop = start + len(planned[i].vectors)
                answers[i] = (scores[start:stop], seqs[start:stop])
                start = stop
        return answers


def _keywords(query: Query) -> list[str]:
    """A keyword or hybrid search's keyword queries: ``keyword`` (with query or vector), else the text queries."""
    if query.keyword is not None:
        if query.field not in ("query", "vector"):
            raise InvalidRequest(f"keyword goes with query or vector; with {query.field}, search one at a time"
                                 + (" (queries are their own keywords)." if query.field == "queries" else "."),
                                 param="keyword")
        if not query.keyword.strip():
            raise InvalidRequest("keyword must not be empty.", param="keyword")
        return [query.keyword]
    if query.texts is None:
        raise InvalidRequest(f"mode {query.mode} with {query.field} needs keyword: the text to search for.",
                             param="keyword")
    return query.texts


def _answer(plan: _Planned, scores: np.ndarray, seqs: np.ndarray,
            documents: dict[int, StoredDocument]) -> list[list[Hit]] | Exception:
    """One search's hits, each query's best first; or the error that its answer is too large."""
    mine = {s: documents[s] for s in seqs.ravel().tolist() if s in documents}  # -1 (no hit) is never a seq
    try:
        validation.check_response_size(mine.values(), "top_k", text="text" in plan.query.include,
                                       metadata="metadata" in plan.query.include)
    except InvalidRequest as exc:
        return exc
    lower_is_better = plan.row.metric == "l2"
    return [_ranked(score_row, seq_row, mine, lower_is_better, plan.query.min_score, plan.query.explain)
            for score_row, seq_row in zip(scores, seqs)]


def _ranked(scores: np.ndarray, seqs: np.ndarray, found: dict[int, StoredDocument], lower_is_better: bool,
            min_score: float | None, explain: bool) -> list[Hit]:
    """One query's hits: above ``min_score`` (below it for l2), best first, ties by age (seq)."""
    pairs = [(score, seq) for score, seq in zip(scores.tolist(), seqs.tolist()) if seq in found]
    if min_score is not None:
        pairs = [(s, q) for s, q in pairs if (s <= min_score if lower_is_better else s >= min_score)]
    pairs.sort(key=lambda p: (p[0] if lower_is_better else -p[0], p[1]))
    return [Hit(score, found[seq], Ranked(rank, score) if explain else None)
            for rank, (score, seq) in enumerate(pairs, start=1)]
