"""FAISS-backed vector index for one collection of vectors with caller-assigned int64 ids.

Knows nothing of HTTP or SQL. See :class:`VectorIndex` for the API and the thread-safety contract
(the caller serialises writes and does not search during a write; concurrent searches are fine).
"""

from .build import build, build_from_chunks
from .persistence import CorruptIndexError
from .validation import METRICS
from .vector_index import (
    DEFAULT_COMPACT_THRESHOLD,
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    EXACT_SEARCH_FRACTION,
    EXACT_SEARCH_MAX_IDS,
    EXACT_SEARCH_MIN_IDS,
    AllowedSet,
    VectorIndex,
)

__all__ = [
    "VectorIndex",
    "AllowedSet",
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
]
