"""KeywordIndex: BM25 over one collection's texts, kept in memory beside its vector index.

Lucene's BM25 (as Lucene, Elasticsearch and bm25s's ``lucene`` method score it): a document's score for
a query is the sum over the query's distinct terms ``t`` of

    idf(t) * tf / (tf + k1 * (1 - b + b * length / average length)),   idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))

with k1 = 1.2 and b = 0.75, N the documents that have text, df those holding ``t``, and every statistic
this collection's own. Text is cut into terms by Unicode word characters, case-folded, less Lucene's 33
English stop words: ``"ERR-4032 on the Node7"`` holds ``err``, ``4032`` and ``node7``.

Documents are keyed by seq (their write-log position, as in the vector index): a replaced document
is removed under its old seq and added under its new one. Postings are appended per term and read as
numpy arrays; removed documents are masked until they are a third of all, then the postings are
rebuilt without them. Scoring is exact: every document holding a query term is scored, so the top k
among an allowed set (a filter's documents) is the true one. Callers hold the collection's lock:
shared for searches (which may race to fill a read cache: each builds a whole one, one is kept),
exclusive for writes.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from collections import Counter
from collections.abc import Sequence

import numpy as np

TERM = re.compile(r"\w+")
K1 = 1.2
B = 0.75
# Lucene's English stop words (as bm25s's "en"): terms this common carry no signal, and in a hybrid
# search they would rank every document in the keyword branch.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split())


def terms(text: str) -> list[str]:
    return [term for term in TERM.findall(text.casefold()) if term not in STOP_WORDS]


class _Postings:
    """The documents (slots) holding one term, with its frequency in each: appended to compact arrays (8
    bytes a posting), read as numpy arrays (copied once after each change)."""

    __slots__ = ("slots", "tfs", "_arrays")

    def __init__(self) -> None:
        self.slots = array("i")
        self.tfs = array("f")
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, slot: int, tf: int) -> None:
        self.slots.append(slot)
        self.tfs.append(tf)
        self._arrays = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (np.frombuffer(self.slots, dtype=np.int32).copy(),
                            np.frombuffer(self.tfs, dtype=np.float32).copy())
        return self._arrays


class KeywordIndex:
    def __init__(self) -> None:
        self._postings: dict[str, _Postings] = {}
        self._df: Counter[str] = Counter()  # live documents holding each term
        self._slot_of: dict[int, int] = {}  # seq -> slot, live documents only
        self._seqs: list[int] = []  # by slot
        self._lengths: list[int] = []  # by slot
        self._terms: list[tuple[str, ...] | None] = []  # by slot: its distinct terms; None once removed
        self._total = 0  # terms in live documents
        # by slot: seqs, BM25's length normalisation k1 (1 - b + b length / average length), live; until a write
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def upsert(self, seqs: Sequence[int] | np.ndarray, texts: Sequence[str | None]) -> None:
        """Add documents (a seq already here is replaced); one with no text, or no terms, is not kept."""
        seqs = np.asarray(seqs).tolist()
        self.remove([s for s in seqs if s in self._slot_of])
        for seq, text in zip(seqs, texts):
            counts = Counter(map(sys.intern, terms(text))) if text else None  # one string per distinct term
            if not counts:
                continue
            slot = len(self._seqs)
            self._slot_of[seq] = slot
            self._seqs.append(seq)
            length = sum(counts.values())
            self._lengths.append(length)
            self._terms.append(tuple(counts))
            self._total += length
            for term, tf in counts.items():
                postings = self._postings.get(term)
                if postings is None:
                    postings = self._postings[term] = _Postings()
                postings.add(slot, tf)
            self._df.update(counts.keys())
        self._arrays = None

    def remove(self, seqs: Sequence[int] | np.ndarray) -> None:
        for seq in np.asarray(seqs).tolist():
            slot = self._slot_of.pop(seq, None)
            if slot is None:
                continue
            self._df.subtract(self._terms[slot])
            self._total -= self._lengths[slot]
            self._terms[slot] = None
        self._arrays = None
        if len(self._seqs) > 3 * max(len(self._slot_of), 1000) // 2:
            self._compact()

    def _compact(self) -> None:
        """Postings rebuilt without the removed documents (their slots renumbered)."""
        live = [slot for slot, held in enumerate(self._terms) if held is not None]
        renumber = {old: new for new, old in enumerate(live)}
        postings: dict[str, _Postings] = {}
        for term, old in self._postings.items():
            kept = _Postings()
            for slot, tf in zip(old.slots, old.tfs):
                if slot in renumber:
                    kept.add(renumber[slot], tf)
            if kept.slots:
                postings[term] = kept
        self._postings = postings
        self._df = +self._df  # drops the terms no live document holds
        self._seqs = [self._seqs[s] for s in live]
        self._lengths = [self._lengths[s] for s in live]
        self._terms = [self._terms[s] for s in live]
        self._slot_of = {seq: slot for slot, seq in enumerate(self._seqs)}
        self._arrays = None

    def _by_slot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            lengths = np.array(self._lengths, dtype=np.float32)
            norm = K1 * (1 - B + B * lengths / (self._total / max(len(self._slot_of), 1)))
            self._arrays = (np.array(self._seqs, dtype=np.int64), norm,
                            np.array([held is not None for held in self._terms], dtype=bool))
        return self._arrays

    def search(self, queries: Sequence[str], k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` (scores, seqs) of each query, best first (ties: lower seq first), among ``allowed``
        seqs (sorted) if given; rows padded with score 0 and seq -1 past the documents that match."""
        scores = np.zeros((len(queries), k), dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, query in enumerate(queries):
            top_scores, top_seqs = self._one(query, k, allowed)
            scores[row, :len(top_seqs)] = top_scores
            found[row, :len(top_seqs)] = top_seqs
        return scores, found

    def _one(self, query: str, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._slot_of)
        wanted = [t for t in dict.fromkeys(terms(query)) if self._df.get(t, 0) > 0]
        if not n or not wanted:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        seqs, norm, live = self._by_slot()
        slot_parts, score_parts = [], []
        for term in wanted:
            slots, tfs = self._postings[term].arrays()
            df = self._df[term]
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            slot_parts.append(slots)
            score_parts.append(idf * tfs / (tfs + norm[slots]))
        slots = np.concatenate(slot_parts)
        summed = np.bincount(slots, weights=np.concatenate(score_parts), minlength=len(seqs))
        candidates = np.unique(slots)
        candidates = candidates[live[candidates]]
        if allowed is not None:
            candidates = candidates[np.isin(seqs[candidates], allowed, assume_unique=True)]
        if len(candidates) > k:
            # the k best, ties at the k-th score kept whole so that the lower seqs can win them
            cut = -np.partition(-summed[candidates], k - 1)[k - 1]
            candidates = candidates[summed[candidates] >= cut]
        order = np.lexsort((seqs[candidates], -summed[candidates]))[:k]
        best = candidates[order]
        return summed[best].astype(np.float32), seqs[best]
