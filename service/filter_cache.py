"""The documents a metadata filter matches, kept per filter and brought up to date with each write.

A filtered search needs the FAISS ids (write-log positions, "seqs") of the documents its filter
matches. SQL finds them by evaluating the filter on every document of the collection, since JSON
metadata has no index: about 200 ms per 100k documents, on every query. This cache keeps each
recent filter's answer together with the write-log position it reflects. When the collection has
moved on, only the writes since then are looked at: the seqs they removed come from an in-memory log
of recent writes, and the documents they added from SQL (``seq > position``, an index range).
Filters are matched by their canonical JSON, so a cached answer is exactly what SQL would return.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

import msgspec
import numpy as np


def filter_key(filter: Any) -> bytes:
    """Canonical form of a filter: the same filter written with its keys in any order gives the same key."""
    return msgspec.json.encode(filter, order="sorted")


class FilterCache:
    def __init__(self, position: int, *, max_filters: int = 32, max_seqs: int = 4_000_000,
                 max_log: int = 10_000) -> None:
        self.max_filters = max_filters
        self.max_seqs = max_seqs  # all answers together, so at most 8 bytes * max_seqs of memory
        self.max_log = max_log  # writes remembered; an answer older than the oldest is recomputed
        self._answers: collections.OrderedDict[bytes, tuple[int, np.ndarray]] = collections.OrderedDict()
        self._seqs = 0
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

    def allowed(self, key: bytes, position: int, matching: Callable[[int | None], np.ndarray]) -> np.ndarray:
        """Sorted seqs matching the filter ``key`` at ``position`` (the collection's current one).

        ``matching(after)`` asks SQL for the seqs matching the filter, all of them (``after=None``)
        or those above ``after``. Call it only while the collection cannot change (its read lock).
        """
        with self._lock:
            cached = self._answers.get(key)
            if cached is not None and cached[0] < self._horizon:
                cached = None  # its removals have left the log
            if cached is None:
                self.misses += 1
            elif cached[0] == position:
                self.hits += 1
                self._answers.move_to_end(key)  # most recently used last: the first to go is the least used
                return cached[1]
            else:
                self.updates += 1
                removed = [seqs for at, seqs in self._removals if at > cached[0]]
        if cached is None:
            seqs = np.unique(matching(None))
        else:
            seqs = cached[1]
            if removed:
                seqs = seqs[~np.isin(seqs, np.concatenate(removed))]
            added = matching(cached[0])
            if len(added):
                seqs = np.union1d(seqs, added)
        self._store(key, position, seqs)
        return seqs

    def _store(self, key: bytes, position: int, seqs: np.ndarray) -> None:
        with self._lock:
            old = self._answers.pop(key, None)
            if old is not None:
                self._seqs -= len(old[1])
            if position < self._horizon or len(seqs) > self.max_seqs:
                return
            self._answers[key] = (position, seqs)
            self._seqs += len(seqs)
            while len(self._answers) > self.max_filters or self._seqs > self.max_seqs:
                self._seqs -= len(self._answers.popitem(last=False)[1][1])
