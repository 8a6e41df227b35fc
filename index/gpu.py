"""Optional GPU search clones (faiss-gpu builds only; faiss-cpu has no StandardGpuResources).

The CPU index stays the source of truth (writes, persistence); a GPU clone (:class:`GpuClone`) made with
``faiss.index_cpu_to_gpu`` serves unfiltered searches and is re-made lazily after writes.
"""

from __future__ import annotations

import logging
import threading

import faiss

log = logging.getLogger("index")

# Limits of the GPU k-selection kernels.
GPU_MAX_K = 2048
GPU_MAX_NPROBE = 2048

_resources = None
_lock = threading.Lock()


def gpu_count() -> int:
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "index_cpu_to_gpu"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # pragma: no cover - broken driver
        return 0


def resources():
    """Process-wide StandardGpuResources (temporary memory pools are per resources object)."""
    global _resources
    with _lock:
        if _resources is None:
            _resources = faiss.StandardGpuResources()
        return _resources


def to_gpu(index, device: int = 0):
    """Clone a CPU index onto a GPU (raises if the type is unsupported there)."""
    # Default cloner options: float32 storage, so a Flat clone stays exact. A type the GPU cannot take
    # (e.g. IVFPQ with too many sub-quantizers for shared memory) raises; the caller falls back to CPU.
    return faiss.index_cpu_to_gpu(resources(), device, index)


def choose(use_gpu: bool | None, capable: bool, factory: str) -> bool:
    """Whether an index of ``factory`` searches on a GPU clone: None = when possible; True = required
    (ValueError when impossible); False = never."""
    if use_gpu is None:
        return capable and gpu_count() > 0
    if not use_gpu:
        return False
    if not capable:
        raise ValueError(f"use_gpu=True but {factory!r} cannot be searched on a GPU (Flat/IVF only)")
    if gpu_count() == 0:
        raise ValueError("use_gpu=True but faiss sees no GPU (is faiss-gpu installed?)")
    return True


class GpuClone:
    """A GPU copy of one CPU index for its unfiltered searches.

    Made on the first search, kept in step with pure additions (re-cloning a large index after every
    upsert would cost more than the searches gain) and made again on the search after any other change.
    Any failure (unsupported type, out of GPU memory) switches it off for good: searches stay correct on
    the CPU index.
    """

    def __init__(self, index, factory: str):
        self._index = index
        self._factory = factory
        self._lock = threading.Lock()  # concurrent searches race to make the clone
        self._clone = None
        self._stale = True
        self.enabled = True

    def search(self, queries, k: int, nprobe: int | None):
        """(distances, labels), or None when the GPU cannot answer (limits, failure, switched off)."""
        if not self.enabled or k > GPU_MAX_K or (nprobe is not None and nprobe > GPU_MAX_NPROBE):
            return None
        try:
            with self._lock:
                if self._stale or self._clone is None:
                    self._clone = None
                    self._clone = to_gpu(self._index)
                    self._stale = False
                clone = self._clone
            params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe is not None else None
            return clone.search(queries, k, params=params)
        except Exception as exc:
            log.warning("index %s: GPU search failed (%s); using the CPU index from now on", self._factory, exc)
            self.enabled = False
            self._clone = None
            return None

    def added(self, labels, vectors) -> None:
        """The CPU index gained these vectors (and nothing else changed)."""
        if self._stale or self._clone is None:
            self._stale = True
            return
        try:
            self._clone.add_with_ids(vectors, labels)
        except Exception:
            self._stale = True

    def changed(self) -> None:
        """The CPU index changed in some other way: clone it again before the next search."""
        self._stale = True
