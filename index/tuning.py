"""Tuning: the knobs that change how an index is searched and maintained, never what it holds.

They are kept out of snapshot files on purpose: a snapshot stores structure (FAISS indexes, id
mapping, training state), and the knobs come from whoever loads it (the service builds a Tuning from
its settings). Adding, removing or retuning a knob therefore never turns an older snapshot into a
"corrupt" one that would force a full rebuild from the database.

One Tuning may serve every index type: a knob that does not apply to an index (efSearch on an IVF
index, nprobe on HNSW) is ignored by it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from .structure import default_nprobe

DEFAULT_EF_SEARCH = 128
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_COMPACT_THRESHOLD = 0.2
# Filtered searches are answered by brute force over the allowed vectors when the allowed set (live
# ids only) has at most EXACT_SEARCH_MIN_IDS ids, or is under EXACT_SEARCH_FRACTION of the live vectors
# while not larger than EXACT_SEARCH_MAX_IDS (bounds the cost of gathering the vectors).
EXACT_SEARCH_MIN_IDS = 4096
EXACT_SEARCH_FRACTION = 0.2
EXACT_SEARCH_MAX_IDS = 50_000


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Search and maintenance knobs of a VectorIndex (validated here: bad values raise ValueError).

    Attributes:
        ef_search: HNSW efSearch (raised to k and boosted for filtered searches).
        ef_construction: HNSW efConstruction for vectors added from now on.
        nprobe: IVF lists probed per query; None = ~sqrt(nlist), at least 8 (see structure.default_nprobe).
            Capped at nlist.
        min_train_size: vectors collected (searched exactly) before an index that needs training is
            trained; None = what its structure needs (structure.min_training_size).
        compact_threshold: a tombstoned index (HNSW, refine) is rebuilt from its live vectors at the end
            of the write that takes its deleted fraction above this.
        exact_search_min_ids, exact_search_fraction, exact_search_max_ids: when a filtered search is
            brute-forced over the allowed vectors instead of asking FAISS with a selector (see the
            constants above).
    """

    ef_search: int = DEFAULT_EF_SEARCH
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    nprobe: int | None = None
    min_train_size: int | None = None
    compact_threshold: float = DEFAULT_COMPACT_THRESHOLD
    exact_search_min_ids: int = EXACT_SEARCH_MIN_IDS
    exact_search_fraction: float = EXACT_SEARCH_FRACTION
    exact_search_max_ids: int = EXACT_SEARCH_MAX_IDS

    def __post_init__(self) -> None:
        for name in ("ef_search", "ef_construction", "nprobe", "min_train_size"):
            value = getattr(self, name)
            if value is not None or name in ("ef_search", "ef_construction"):
                object.__setattr__(self, name, positive_int(name, value))
        for name in ("exact_search_min_ids", "exact_search_max_ids"):
            object.__setattr__(self, name, _count(name, getattr(self, name)))
        for name in ("compact_threshold", "exact_search_fraction"):
            object.__setattr__(self, name, _fraction(name, getattr(self, name)))

    @classmethod
    def check(cls, tuning) -> "Tuning":
        """``tuning``, or the defaults for None; ValueError for anything else."""
        if tuning is None:
            return cls()
        if not isinstance(tuning, cls):
            raise ValueError(f"tuning must be an index.Tuning, got {type(tuning).__name__}")
        return tuning

    def nprobe_for(self, nlist: int) -> int:
        """nprobe for an IVF index of ``nlist`` lists, at most nlist."""
        return min(self.nprobe or default_nprobe(nlist), int(nlist))


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)
