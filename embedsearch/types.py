"""What the client hands back: plain dataclasses, vectors as numpy float32 arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

import numpy as np

Metric: TypeAlias = Literal["cosine", "dot", "l2"]
Include: TypeAlias = Literal["text", "metadata", "vector"]
# dense: nearest vectors; keyword: BM25 over the documents' text; hybrid: both, fused
Mode: TypeAlias = Literal["dense", "keyword", "hybrid"]
Filter: TypeAlias = Mapping[str, Any]
# A vector as sent: any 1-D sequence of numbers (sent as base64 of little-endian float32).
VectorLike: TypeAlias = "np.ndarray | Sequence[float]"


@dataclass
class CollectionInfo:
    name: str
    model: str | None  # the embeddings model of a text collection; None: vectors only
    dimension: int
    metric: Metric
    index: str  # the FAISS factory string
    count: int  # documents stored
    indexed: int  # vectors in the index (equal to count once every write is applied)
    created_at: datetime
    status: Literal["ready", "unavailable"] = "ready"


@dataclass
class Document:
    """A document to upsert, or one read back. An id left out is made by the client (a UUID), so that a
    retried upsert never stores a document twice."""

    id: str | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None


@dataclass
class Hit:
    id: str
    # dense: cosine similarity, inner product (higher is better) or l2 distance (lower is better);
    # keyword: BM25; hybrid: the fused score
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None
    # with explain=True: {"dense": {"rank", "score"} | None, "keyword": {"rank", "score"} | None}
    explain: dict[str, Any] | None = None


@dataclass
class Page:
    """One page of a collection's documents, in id order; pass ``next_cursor`` on for the next."""

    documents: list[Document]
    next_cursor: str | None
    has_more: bool


@dataclass
class Model:
    id: str
    created: int
    owned_by: str


@dataclass
class ApiKey:
    id: int
    tenant: str
    prefix: str
    admin: bool
    created_at: datetime
    key: str | None = None  # only in the answer that made it


DocumentLike: TypeAlias = "Document | Mapping[str, Any]"
