"""FAISS-backed vector index for one collection of vectors with caller-assigned int64 ids, and a BM25
keyword index of its texts (keywords.py).

Knows nothing of HTTP or SQL. See index/vector_index.py for the API and the thread-safety contract
(the caller serialises writes; searches and ``freeze`` may run concurrently with each other, never with
a write; ``Snapshot.write`` needs no lock).
"""

from .allowed import GATHERED_MAX_BYTES
from .build import build, build_from_chunks
from .keywords import KeywordIndex
from .persistence import CorruptIndexError, Snapshot
from .structure import MIN_POINTS_PER_CENTROID, default_nprobe
from .tuning import (
    DEFAULT_COMPACT_THRESHOLD,
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    EXACT_SEARCH_FRACTION,
    EXACT_SEARCH_MAX_IDS,
    EXACT_SEARCH_MIN_IDS,
    Tuning,
)
from .validation import METRICS
from .vector_index import AllowedSet, VectorIndex

__all__ = [
    "VectorIndex",
    "KeywordIndex",
    "AllowedSet",
    "Tuning",
    "Snapshot",
    "build",
    "build_from_chunks",
    "CorruptIndexError",
    "METRICS",
    "DEFAULT_EF_SEARCH",
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_COMPACT_THRESHOLD",
    "EXACT_SEARCH_MIN_IDS",
    "EXACT_SEARCH_FRACTION",
    "EXACT_SEARCH_MAX_IDS",
    "GATHERED_MAX_BYTES",
    "MIN_POINTS_PER_CENTROID",
    "default_nprobe",
]
