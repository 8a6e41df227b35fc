"""AllowedSet: the allowed ids of a filtered search, prepared once for one state of one index.

Preparing a large allowed set (sorting, dropping ids not in the index, mapping to FAISS labels, the
FAISS selector, the vectors an exact search reads) costs far more than a filtered search itself, and a
service searches with the same filter again and again; so what was prepared is kept here until the
index changes (any write makes the set stale; searching with a stale set prepares it again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .vector_index import VectorIndex

# A prepared allowed set keeps its gathered vectors for later exact searches when they take at most
# this many bytes (10k vectors of 640-d fit); larger sets are gathered again on each search.
GATHERED_MAX_BYTES = 32 << 20


class AllowedSet:
    """Allowed ids prepared for one state of one index (see :meth:`VectorIndex.prepare_allowed`).

    ``source`` is the array it was prepared from (callers may compare it by identity); ``current`` says
    whether the index is unchanged since.
    """

    __slots__ = ("index", "version", "source", "labels", "ids", "_store", "_selector", "_gathered")

    def __init__(self, index: "VectorIndex", store, source: np.ndarray, labels: np.ndarray, ids: np.ndarray):
        self.index, self.version, self.source = index, index._version, source  # _version: package-internal
        self.labels, self.ids = labels, ids  # sorted by id; only ids present in the index
        self._store = store  # the keeper these labels belong to
        self._selector = None  # (selector, the buffer it reads or None), built on first use
        self._gathered: np.ndarray | None = None  # their vectors, for exact searches, gathered on first use

    @property
    def current(self) -> bool:
        """Whether the index is unchanged since this set was prepared."""
        return self.version == self.index._version

    def selector(self):
        """(FAISS selector of these labels, numpy buffer it reads or None), built once. Keep the buffer
        alive while searching."""
        built = self._selector
        if built is None:  # searches may race here: each builds a whole pair, one is kept
            built = self._selector = self._store.selector(self.labels)
        return built

    def gathered(self) -> np.ndarray | None:
        """The allowed vectors in ``labels`` order, gathered once for exact searches; None when they
        would take more than GATHERED_MAX_BYTES (the caller then gathers them chunk by chunk)."""
        held = self._gathered
        if held is None and self.labels.size * self.index.dimension * 4 <= GATHERED_MAX_BYTES:
            held = self._gathered = self._store.gather(self.labels)  # searches may race: one is kept
        return held
