"""Optional GPU search clones (faiss-gpu builds only; faiss-cpu has no StandardGpuResources).

The CPU index stays the source of truth (writes, persistence); a GPU clone made with
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
