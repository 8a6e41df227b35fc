"""Bookkeeping of the caller's int64 ids ("external" ids) against FAISS labels.

* :class:`DirectIds` -- FAISS labels *are* the external ids (IVF, IndexIDMap2-wrapped indexes).
  Only the set of live ids is kept (FAISS itself never checks for duplicates).
* :class:`PositionalIds` -- FAISS labels are positions 0..n-1 in an index that cannot remove vectors
  (HNSW...). ``int2ext[label]`` is the external id or -1 for a deleted position (a tombstone), and a
  little-endian bitmap of live labels is kept for ``faiss.IDSelectorBitmap``.
"""

from __future__ import annotations

import numpy as np


def _bits_for(labels: np.ndarray, nbytes: int) -> np.ndarray:
    bits = np.zeros(nbytes, dtype=np.uint8)
    if labels.size:
        np.bitwise_or.at(bits, labels >> 3, (1 << (labels & 7)).astype(np.uint8))
    return bits


class DirectIds:
    """Live-id set; labels == external ids."""

    def __init__(self, ids: np.ndarray | None = None):
        self._live: set[int] = set() if ids is None else set(np.asarray(ids, dtype=np.int64).tolist())

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, ext: int) -> bool:
        return ext in self._live

    def present(self, ids: np.ndarray) -> np.ndarray:
        live = self._live
        return np.fromiter((i in live for i in ids.tolist()), dtype=bool, count=ids.size)

    def labels(self, ids: np.ndarray) -> np.ndarray:
        """Labels of ids known to be present."""
        return ids

    def add(self, ids: np.ndarray) -> None:
        self._live.update(ids.tolist())

    def discard(self, ids: np.ndarray) -> None:
        self._live.difference_update(ids.tolist())

    def sorted_ids(self) -> np.ndarray:
        out = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
        out.sort()
        return out

    def live_labels_and_ids(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.sorted_ids()
        return ids, ids

    def to_external(self, labels: np.ndarray) -> np.ndarray:
        return labels


class PositionalIds:
    """Mapping external id <-> position label, with tombstones for deleted positions."""

    def __init__(self, int2ext: np.ndarray | None = None):
        int2ext = np.empty(0, dtype=np.int64) if int2ext is None else np.asarray(int2ext, dtype=np.int64)
        self._n = int(int2ext.size)
        self._int2ext = np.empty(max(1024, self._n), dtype=np.int64)
        self._int2ext[: self._n] = int2ext
        live = np.flatnonzero(int2ext >= 0)
        self._ext2int: dict[int, int] = dict(zip(int2ext[live].tolist(), live.tolist()))
        if len(self._ext2int) != live.size:
            raise ValueError("duplicate live ids in the id mapping")
        self._bits = _bits_for(live, self._int2ext.size // 8 + 1)

    # -- queries -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ext2int)

    def __contains__(self, ext: int) -> bool:
        return ext in self._ext2int

    @property
    def n_labels(self) -> int:
        """Number of positions ever allocated since the last reset (live + dead)."""
        return self._n

    @property
    def int2ext(self) -> np.ndarray:
        return self._int2ext[: self._n]

    def present(self, ids: np.ndarray) -> np.ndarray:
        m = self._ext2int
        return np.fromiter((i in m for i in ids.tolist()), dtype=bool, count=ids.size)

    def labels(self, ids: np.ndarray) -> np.ndarray:
        """Labels of ids known to be present."""
        m = self._ext2int
        return np.fromiter((m[i] for i in ids.tolist()), dtype=np.int64, count=ids.size)

    def sorted_ids(self) -> np.ndarray:
        return np.sort(self.int2ext[self.int2ext >= 0])

    def live_labels_and_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, ids) of all live entries, sorted by id."""
        labels = np.flatnonzero(self.int2ext >= 0)
        ids = self.int2ext[labels]
        order = np.argsort(ids, kind="stable")
        return labels[order], ids[order]

    def to_external(self, labels: np.ndarray) -> np.ndarray:
        valid = (labels >= 0) & (labels < self._n)
        out = np.full(labels.shape, -1, dtype=np.int64)
        out[valid] = self._int2ext[labels[valid]]
        return out

    def live_bitmap(self) -> np.ndarray:
        """Bitmap (bit i of byte i//8, little-endian) of live labels; a view, valid until the next write."""
        return self._bits[: (self._n + 7) // 8 or 1]

    def bitmap_of(self, labels: np.ndarray) -> np.ndarray:
        return _bits_for(labels, (self._n + 7) // 8 or 1)

    # -- updates -----------------------------------------------------------------------------------
    def append(self, ids: np.ndarray) -> np.ndarray:
        """Allocate the next positions for ids (absent ones); returns their labels."""
        n = ids.size
        if self._n + n > self._int2ext.size:
            cap = max(self._n + n, 2 * self._int2ext.size)
            grown = np.empty(cap, dtype=np.int64)
            grown[: self._n] = self._int2ext[: self._n]
            self._int2ext = grown
            bits = np.zeros(cap // 8 + 1, dtype=np.uint8)
            bits[: self._bits.size] = self._bits
            self._bits = bits
        labels = np.arange(self._n, self._n + n, dtype=np.int64)
        self._int2ext[self._n : self._n + n] = ids
        self._n += n
        self._ext2int.update(zip(ids.tolist(), labels.tolist()))
        np.bitwise_or.at(self._bits, labels >> 3, (1 << (labels & 7)).astype(np.uint8))
        return labels

    def kill(self, labels: np.ndarray) -> None:
        """Mark live labels as deleted."""
        ext = self._int2ext[labels]
        for e in ext.tolist():
            del self._ext2int[e]
        self._int2ext[labels] = -1
        np.bitwise_and.at(self._bits, labels >> 3, (~(1 << (labels & 7))).astype(np.uint8))

    def reset(self, ids_in_label_order: np.ndarray) -> None:
        """Renumber after a rebuild: ids_in_label_order[i] now lives at label i."""
        self.__init__(ids_in_label_order)
