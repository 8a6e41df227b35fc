"""What a search filter allows: one cache per index of each recent filter's matching ids and their
prepared form, kept up to date with every write, under one lock and one memory bound.

A filtered search needs the FAISS ids (write-log positions, "seqs") of the documents its filter
matches. SQL finds them by evaluating the filter on every document of the collection, since JSON
metadata has no index: about 200 ms per 100k documents, on every query. This cache keeps each recent
filter's answer with the write-log position it reflects; when the collection has moved on, only the
writes since are looked at: the seqs they removed come from an in-memory log of recent writes, the
documents they added from SQL (``seq > position``, an index range). Beside the seqs it keeps them
*prepared* for the index (sorted labels, the FAISS selector and, for exact searches, the gathered
vectors: costlier than the search itself for large sets), valid until the index changes.

Filters are matched by their canonical JSON, so a cached answer is exactly what SQL would return. At
most ``max_filters`` filters and ``max_bytes`` of ids, labels and gathered vectors are kept, least
recently used first to go; a filter whose answer alone is larger is never kept.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from index import GATHERED_MAX_BYTES, AllowedSet


def filter_key(filter: Any) -> bytes:
    """Canonical form of a filter: the same filter written with its keys in any order gives the same key."""
    return msgspec.json.encode(filter, order="sorted")


@dataclass(eq=False, slots=True)
class _Answer:
    position: int  # the write-log position the seqs reflect
    seqs: np.ndarray  # sorted
    prepared: AllowedSet
    nbytes: int


class AllowedCache:
    def __init__(self, position: int, dimension: int, *, max_filters: int = 32, max_bytes: int = 256 << 20,
                 max_log: int = 10_000) -> None:
        self.dimension = dimension
        self.max_filters = max_filters
        self.max_bytes = max_bytes
        self.max_log = max_log  # writes remembered; an answer older than the oldest is recomputed
        self._answers: collections.OrderedDict[bytes, _Answer] = collections.OrderedDict()
        self._bytes = 0
        self._removals: collections.deque[tuple[int, np.ndarray]] = collections.deque()  # (position, seqs)
        self._horizon = position  # every removal after this position is in the log
        self._lock = threading.Lock()
        self.hits = self.updates = self.misses = 0

    def record(self, position: int, removed: np.ndarray) -> None:
        """A write reached ``position``, removing ``removed`` (seqs). Call it for every write, in order."""
        with self._lock:
            if not self._answers:  # nothing to update later: no need to remember
                self._removals.clear()
                self._horizon = position
                return
            if len(removed):
                self._removals.append((position, removed))
            while len(self._removals) > self.max_log:
                self._horizon = self._removals.popleft()[0]

    def allowed(self, key: bytes, position: int, matching: Callable[[int | None], np.ndarray],
                prepare: Callable[[np.ndarray], AllowedSet]) -> AllowedSet:
        """The documents the filter ``key`` matches at ``position`` (the index's current one), prepared
        by ``prepare`` (the index's ``prepare_allowed``).

        ``matching(after)`` asks SQL for the seqs matching the filter, all of them (``after=None``) or
        those above ``after``. Call this only while the index cannot change (under its read lock).
        """
        with self._lock:
            cached = self._answers.get(key)
            if cached is not None and cached.position < self._horizon:
                cached = None  # its removals have left the log
            if cached is None:
                self.misses += 1
            elif cached.position == position:
                self.hits += 1
                self._answers.move_to_end(key)  # most recently used last: the first to go is the least used
                if cached.prepared.current:
                    return cached.prepared
            else:
                self.updates += 1
                removed = [seqs for at, seqs in self._removals if at > cached.position]
        if cached is None:
            seqs = np.unique(matching(None))
        elif cached.position == position:
            seqs = cached.seqs  # the same answer; only the index moved (a compaction, a training)
        else:
            seqs = cached.seqs
            if removed:
                seqs = seqs[~np.isin(seqs, np.concatenate(removed))]
            added = matching(cached.position)
            if len(added):
                seqs = np.union1d(seqs, added)
        prepared = prepare(seqs)
        self._store(key, _Answer(position, seqs, prepared, self._size(seqs, prepared)))
        return prepared

    def _size(self, seqs: np.ndarray, prepared: AllowedSet) -> int:
        """Bytes the answer may hold: its seqs, labels and ids, and its vectors once gathered."""
        gathered = prepared.labels.size * self.dimension * 4
        return seqs.nbytes + prepared.labels.nbytes + prepared.ids.nbytes + (
            gathered if gathered <= GATHERED_MAX_BYTES else 0)

    def _store(self, key: bytes, answer: _Answer) -> None:
        with self._lock:
            old = self._answers.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if answer.position < self._horizon or answer.nbytes > self.max_bytes:
                return
            self._answers[key] = answer
            self._bytes += answer.nbytes
            while len(self._answers) > self.max_filters or self._bytes > self.max_bytes:
                self._bytes -= self._answers.popitem(last=False)[1].nbytes
