"""AllowedCache on its own, over a real index: answers follow a log of writes, their prepared form follows
the index, and stale or oversized answers are recomputed."""

from __future__ import annotations

import numpy as np
import pytest

from index import VectorIndex
from service.engine.allowed import AllowedCache, filter_key

pytestmark = pytest.mark.unit

DIMENSION = 4
ANSWER_BYTES = 8 + 16 + 4 * DIMENSION  # what the cache counts per allowed document: seq, label and id, vector


class Collection:
    """A write log: seq -> group; each write takes new seqs (a replacement removes the old seq)."""

    def __init__(self, cache_args: dict | None = None) -> None:
        self.position = 0
        self.groups: dict[int, int] = {}
        self.index = VectorIndex(DIMENSION, "l2", "Flat")
        self.cache = AllowedCache(self.position, DIMENSION, **(cache_args or {}))
        self.sql_calls: list[int | None] = []
        self.prepared = 0

    def write(self, add: list[int], remove: list[int]) -> None:
        removed = np.array([s for s in remove if s in self.groups], dtype=np.int64)
        for s in removed:
            del self.groups[int(s)]
        self.index.remove(removed)
        for group in add:
            self.position += 1
            self.groups[self.position] = group
            self.index.upsert(np.array([self.position]), np.full((1, DIMENSION), group, dtype=np.float32))
        self.position += 0 if add else 1
        self.cache.record(self.position, removed)

    def allowed(self, group: int) -> np.ndarray:
        def matching(after):
            self.sql_calls.append(after)
            return np.array([s for s, g in self.groups.items() if g == group and (after is None or s > after)],
                            dtype=np.int64)

        def prepare(seqs):
            self.prepared += 1
            return self.index.prepare_allowed(seqs)

        allowed = self.cache.allowed(filter_key({"g": group}), self.position, matching, prepare)
        assert allowed.current
        return allowed.ids

    def truth(self, group: int) -> list[int]:
        return sorted(s for s, g in self.groups.items() if g == group)


def test_answers_follow_writes_and_only_new_documents_are_asked_for():
    c = Collection()
    c.write([1, 2, 1, 1, 3], [])
    assert c.allowed(1).tolist() == c.truth(1) == [1, 3, 4]
    assert c.allowed(1).tolist() == [1, 3, 4] and c.sql_calls == [None]  # second time: no SQL at all
    c.write([1, 2], remove=[3])  # seq 3 goes; seqs 6 (group 1) and 7 (group 2) come
    c.write([], remove=[1])
    assert c.allowed(1).tolist() == c.truth(1)
    assert c.sql_calls == [None, 5]  # only the seqs written after the cached position
    assert (c.cache.hits, c.cache.updates, c.cache.misses) == (1, 1, 1)


def test_keys_ignore_the_order_of_object_keys_but_not_types():
    assert filter_key({"a": 1, "b": {"$in": [1, 2]}}) == filter_key({"b": {"$in": [1, 2]}, "a": 1})
    assert filter_key({"a": 1}) != filter_key({"a": 1.0}) != filter_key({"a": True})


def test_an_answer_older_than_the_write_log_is_recomputed():
    c = Collection({"max_log": 2})
    c.write([1, 1, 2], [])
    c.allowed(1)
    for seq in (1, 2, 3):
        c.write([], remove=[seq])
    assert c.allowed(1).tolist() == c.truth(1) == []
    assert c.sql_calls == [None, None]


def test_a_hit_reuses_the_prepared_set_until_the_index_changes():
    c = Collection()
    c.write([1, 1, 2], [])
    c.allowed(1), c.allowed(1)
    assert c.prepared == 1
    c.write([2], [])  # no document of group 1 changes, but the index does: its labels are prepared again
    assert c.allowed(1).tolist() == [1, 2] and c.prepared == 2


def test_memory_is_bounded_by_filters_and_bytes():
    c = Collection({"max_filters": 2, "max_bytes": 10 * ANSWER_BYTES})
    c.write([g % 4 for g in range(12)], [])
    for g in range(4):
        c.allowed(g)  # 3 seqs each: only the last two filters stay
    calls = len(c.sql_calls)
    c.allowed(3), c.allowed(2)
    assert len(c.sql_calls) == calls
    c.allowed(0)
    assert len(c.sql_calls) == calls + 1
    big = Collection({"max_bytes": 2 * ANSWER_BYTES})
    big.write([0, 0, 0], [])
    big.allowed(0), big.allowed(0)
    assert big.sql_calls == [None, None]  # too big to keep


def test_a_filter_in_use_is_kept_before_ones_used_less_recently():
    c = Collection({"max_filters": 2})
    c.write([1, 2, 3], [])
    c.allowed(1)
    c.allowed(2)
    c.allowed(1)  # a hit: filter 1 is now the most recently used
    c.allowed(3)  # one too many: filter 2, the least recently used, goes
    calls = len(c.sql_calls)
    c.allowed(1)
    assert len(c.sql_calls) == calls  # still cached
    c.allowed(2)
    assert c.sql_calls[calls:] == [None]  # evaluated again
