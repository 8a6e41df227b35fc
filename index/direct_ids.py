"""Direct ids: the FAISS labels *are* the caller's int64 ids.

For indexes that remove vectors natively: IVF indexes (a hashtable direct map makes ``reconstruct(id)``
and removal work for arbitrary ids) and indexes that can remove but not take ids themselves (Flat, PQ,
SQ, LSH, ...), wrapped in an ``IndexIDMap2``. Deletes and replacements leave nothing behind, so there
are no tombstones and nothing to compact. FAISS never checks for duplicate ids, so the set of live ids
is kept here.

The training buffer (training.py) is one of these too, over an exact flat index.
"""

from __future__ import annotations

import faiss
import numpy as np

from . import structure
from .gpu import GpuClone


class DirectIds:
    """A FAISS index whose labels are the caller's ids, with the set of ids it holds.

    Shares its interface with :class:`~index.tombstones.Tombstones`; VectorIndex talks to whichever
    one its index type chose at construction.
    """

    name = "direct"
    tombstones = 0

    def __init__(self, index, ids: np.ndarray | None = None):
        self.index = index
        self.layout = structure.describe(index)
        self.gpu: GpuClone | None = None  # set by the owner when it searches on a GPU
        self._live: set[int] = set() if ids is None else set(np.asarray(ids, dtype=np.int64).tolist())

    @classmethod
    def fresh(cls, index) -> "DirectIds":
        """An empty keeper for a freshly built ``index`` (wrapped in an IndexIDMap2 unless it is an IVF
        index, which takes ids itself)."""
        if not structure.labels_are_ids(index):
            index = structure.wrap_ids(index)
        ivf = structure.find_ivf(index)
        if ivf is not None:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return cls(index)

    @classmethod
    def restored(cls, index, arrays: dict[str, np.ndarray], tombstones: int) -> "DirectIds":
        """The keeper of a loaded ``index`` and its saved ``ids``; ValueError if they do not match."""
        ids = arrays["ids"].astype(np.int64)
        keeper = cls(index, ids)
        if not len(keeper) == ids.size == index.ntotal or tombstones:
            raise ValueError("id mapping does not match the FAISS index contents")
        return keeper

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self._live)

    def present(self, ids: np.ndarray) -> np.ndarray:
        live = self._live
        return np.fromiter((i in live for i in ids.tolist()), dtype=bool, count=ids.size)

    def labels(self, ids: np.ndarray) -> np.ndarray:
        """Labels of ids known to be present."""
        return ids

    def to_external(self, labels: np.ndarray) -> np.ndarray:
        return labels

    def sorted_ids(self) -> np.ndarray:
        out = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
        out.sort()
        return out

    def live_labels_and_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, ids) of every live vector, sorted by id."""
        ids = self.sorted_ids()
        return ids, ids

    def gather(self, labels: np.ndarray) -> np.ndarray:
        return structure.reconstruct(self.index, labels)

    def selector(self, labels: np.ndarray):
        """(FAISS selector of ``labels``, buffer it reads or None)."""
        return faiss.IDSelectorBatch(labels), None

    def live_selector(self):
        """Every stored vector is live: no selector needed."""
        return None, None

    @property
    def deleted_fraction(self) -> float:
        return 0.0

    # ------------------------------------------------------------------ writes
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors of ids that are not present."""
        structure.add_chunked(self.index, vectors, ids)
        self._live.update(ids.tolist())
        if self.gpu is not None:
            self.gpu.added(ids, vectors)

    def delete(self, ids: np.ndarray) -> None:
        """Remove ids known to be present."""
        removed = self.index.remove_ids(ids)
        if removed != ids.size:  # pragma: no cover - defensive
            raise RuntimeError(f"FAISS removed {removed} vectors, expected {ids.size}")
        self._live.difference_update(ids.tolist())
        if self.gpu is not None:
            self.gpu.changed()

    def maintain(self, compact_threshold: float) -> int:
        """Nothing to compact: removals are physical."""
        return 0

    def clear(self) -> None:
        """Drop every vector (training state stays)."""
        self.index.reset()
        self._live.clear()
        if self.gpu is not None:
            self.gpu.changed()

    def arrays(self) -> dict[str, np.ndarray]:
        """The id mapping as a snapshot stores it (a new array)."""
        return {"ids": self.sorted_ids()}
