"""Tombstones: for indexes that cannot remove vectors (HNSW, refine indexes such as "IVF64,PQ16,RFlat").

FAISS labels are positions 0..ntotal-1 in the order vectors were added. ``int2ext[label]`` is the
caller's id at that position, or -1 once it was deleted or replaced: a tombstone. Searches exclude
tombstones with an ``IDSelectorBitmap`` over a little-endian bitmap of live labels kept here, and once
the deleted fraction passes the tuning's ``compact_threshold`` the index is rebuilt from its live
vectors (compaction), at the end of the write that crossed it.
"""

from __future__ import annotations

import faiss
import numpy as np

from . import structure


def _bits_for(labels: np.ndarray, nbytes: int) -> np.ndarray:
    bits = np.zeros(nbytes, dtype=np.uint8)
    if labels.size:
        np.bitwise_or.at(bits, labels >> 3, (1 << (labels & 7)).astype(np.uint8))
    return bits


class Tombstones:
    """A FAISS index with positional labels, the id <-> position mapping and its tombstones.

    Shares its interface with :class:`~index.direct_ids.DirectIds`.
    """

    name = "tombstones"
    gpu = None  # no GPU type supports these indexes

    def __init__(self, index, int2ext: np.ndarray | None = None, tombstones: int = 0):
        self.index = index
        self.layout = structure.describe(index)
        self._map(np.empty(0, dtype=np.int64) if int2ext is None else np.asarray(int2ext, dtype=np.int64))
        self.tombstones = tombstones

    @classmethod
    def fresh(cls, index, factory: str) -> "Tombstones":
        """An empty keeper for a freshly built ``index``; ValueError if it cannot filter searches (then
        tombstones cannot be excluded and deletes cannot be implemented)."""
        if not structure.supports_selector(index):
            raise ValueError(
                f"factory {factory!r}: {type(index).__name__} supports neither vector removal nor "
                "filtered search, so deletes cannot be implemented; choose another index type"
            )
        ivf = structure.find_ivf(index)
        if ivf is not None:  # reconstruct(position) for exact searches and compaction
            ivf.set_direct_map_type(faiss.DirectMap.Array)
        return cls(index)

    @classmethod
    def restored(cls, index, arrays: dict[str, np.ndarray], tombstones: int) -> "Tombstones":
        """The keeper of a loaded ``index`` and its saved ``int2ext``; ValueError if they do not match."""
        int2ext = arrays["int2ext"].astype(np.int64)
        keeper = cls(index, int2ext, tombstones)
        if not (index.ntotal == int2ext.size and int2ext.size - len(keeper) == tombstones):
            raise ValueError("id mapping does not match the FAISS index contents")
        return keeper

    def _map(self, int2ext: np.ndarray) -> None:
        """(Re)build the mapping: int2ext[i] lives at label i."""
        self._n = int(int2ext.size)
        self._int2ext = np.empty(max(1024, self._n), dtype=np.int64)
        self._int2ext[: self._n] = int2ext
        live = np.flatnonzero(int2ext >= 0)
        self._ext2int: dict[int, int] = dict(zip(int2ext[live].tolist(), live.tolist()))
        if len(self._ext2int) != live.size:
            raise ValueError("duplicate live ids in the id mapping")
        self._bits = _bits_for(live, self._int2ext.size // 8 + 1)

    @property
    def _labels_to_ids(self) -> np.ndarray:
        return self._int2ext[: self._n]

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self._ext2int)

    def present(self, ids: np.ndarray) -> np.ndarray:
        m = self._ext2int
        return np.fromiter((i in m for i in ids.tolist()), dtype=bool, count=ids.size)

    def labels(self, ids: np.ndarray) -> np.ndarray:
        """Labels of ids known to be present."""
        m = self._ext2int
        return np.fromiter((m[i] for i in ids.tolist()), dtype=np.int64, count=ids.size)

    def to_external(self, labels: np.ndarray) -> np.ndarray:
        """Ids of FAISS labels; -1 for -1 (no result) and anything else outside the label space."""
        valid = (labels >= 0) & (labels < self._n)
        return np.where(valid, self._int2ext.take(labels, mode="clip"), -1)

    def sorted_ids(self) -> np.ndarray:
        int2ext = self._labels_to_ids
        return np.sort(int2ext[int2ext >= 0])

    def live_labels_and_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, ids) of every live vector, sorted by id."""
        labels = np.flatnonzero(self._labels_to_ids >= 0)
        ids = self._int2ext[labels]
        order = np.argsort(ids, kind="stable")
        return labels[order], ids[order]

    def gather(self, labels: np.ndarray) -> np.ndarray:
        return structure.reconstruct(self.index, labels)

    def selector(self, labels: np.ndarray):
        """(FAISS selector of ``labels``, the bitmap it reads): a bitmap over the label space, which also
        leaves tombstones out. Keep the bitmap alive while searching."""
        bitmap = _bits_for(labels, (self._n + 7) // 8 or 1)
        return faiss.IDSelectorBitmap(bitmap), bitmap

    def live_selector(self):
        """(selector of the live labels, the bitmap it reads), or (None, None) without tombstones. The
        bitmap is a view, valid until the next write."""
        if not self.tombstones:
            return None, None
        bitmap = self._bits[: (self._n + 7) // 8 or 1]
        return faiss.IDSelectorBitmap(bitmap), bitmap

    @property
    def deleted_fraction(self) -> float:
        """Tombstones / stored vectors."""
        total = self.index.ntotal
        return self.tombstones / total if total else 0.0

    # ------------------------------------------------------------------ writes
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append vectors of ids that are not present at the next positions."""
        start = self.index.ntotal
        if start != self._n:  # pragma: no cover - defensive
            raise RuntimeError(f"label space out of sync: ntotal={start} labels={self._n}")
        structure.add_chunked(self.index, vectors)
        self._allocate(ids)

    def _allocate(self, ids: np.ndarray) -> None:
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

    def delete(self, ids: np.ndarray) -> None:
        """Turn the positions of ids known to be present into tombstones."""
        labels = self.labels(ids)
        for e in ids.tolist():
            del self._ext2int[e]
        self._int2ext[labels] = -1
        np.bitwise_and.at(self._bits, labels >> 3, (~(1 << (labels & 7))).astype(np.uint8))
        self.tombstones += ids.size

    def maintain(self, compact_threshold: float) -> int:
        """Compact once the deleted fraction passes ``compact_threshold``; returns the tombstones purged."""
        if not (self.tombstones and self.deleted_fraction > compact_threshold):
            return 0
        purged = self.tombstones
        labels = np.flatnonzero(self._labels_to_ids >= 0)  # rebuilt in label order, renumbered 0..n-1
        ids = self._int2ext[labels]
        vectors = self.gather(labels)
        self.clear()
        self.add(ids, vectors)
        return purged

    def clear(self) -> None:
        """Drop every vector (training state stays)."""
        self.index.reset()
        self._map(np.empty(0, dtype=np.int64))
        self.tombstones = 0

    def arrays(self) -> dict[str, np.ndarray]:
        """The id mapping as a snapshot stores it (a copy)."""
        return {"int2ext": self._labels_to_ids.copy()}
