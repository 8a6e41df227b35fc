"""Every check on what a client asks to store or search, in one place, with the limits it enforces.

Each check raises :class:`~service.errors.InvalidRequest` naming the field (``param``, the top-level
one; the message has the path) before anything is written or searched: an upsert is all or nothing.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from service.errors import InvalidRequest
from service.limits import (  # re-exported: validation.MAX_TOP_K and so on
    MAX_DELETE_IDS,
    MAX_DIMENSION,
    MAX_DOCUMENTS,
    MAX_ID_LENGTH,
    MAX_INDEX_LENGTH,
    MAX_METADATA_DEPTH,
    MAX_PAGE,
    MAX_QUERIES,
    MAX_RESPONSE_BYTES,
    MAX_RESPONSE_VALUES,
    MAX_SEARCH_HITS,
    MAX_TOP_K,
)
from service.store.documents import CollectionRow, NewDocument, StoredDocument

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_RRF_K = 10_000  # hybrid search's fusion.k (RRF): 1 to this; past it every rank scores about the same


class DocumentInput(Protocol):
    """A document as a client sends it (the wire schema's DocumentIn has these fields)."""

    id: str | None
    text: str | None
    vector: Sequence[float] | np.ndarray | None
    metadata: dict[str, Any] | None


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise InvalidRequest("name must be 1-64 characters of A-Z, a-z, 0-9, _ and -.", param="name")


def check_text(value: str, where: str, param: str = "documents") -> None:
    """Strings bound for SQL: PostgreSQL can store neither NUL nor (in UTF-8) unpaired surrogates."""
    if "\x00" in value:
        raise InvalidRequest(f"{where} contains a NUL character.", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where} contains an unpaired surrogate.", param=param) from None


def vector(values: Sequence[float] | np.ndarray, row: CollectionRow, where: str, param: str) -> np.ndarray:
    """One vector for ``row``'s collection: its dimension, finite float32, and a direction under cosine."""
    if len(values) != row.dimension:
        raise InvalidRequest(f"{where} has {len(values)} values; this collection's dimension is {row.dimension}.",
                             param=param)
    with np.errstate(over="ignore"):
        array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidRequest(f"{where} contains NaN or infinite values (or values beyond float32).", param=param)
    if row.metric == "cosine" and not normalisable(array[None])[0]:
        raise InvalidRequest(f"{where} is all zeros: a cosine collection cannot compare a vector without a "
                             "direction.", param=param)
    return array


def normalisable(vectors: np.ndarray) -> np.ndarray:
    """Which rows of a float32 array have a length to divide by (cosine): those with a nonzero entry. The
    index normalises in float64, where the square of the smallest float32 is still above zero."""
    return vectors.any(axis=1)


def check_embedded(vectors: np.ndarray, row: CollectionRow, names: list[str], param: str) -> None:
    """A text whose vector is all zeros at the collection's dimension cannot be compared by cosine (nor be
    indexed), so it is refused like a zero vector sent by the client."""
    if row.metric == "cosine":
        for i in np.flatnonzero(~normalisable(vectors)):
            raise InvalidRequest(f"{names[i]} embeds to a vector of zeros at dimension {row.dimension}, which "
                                 "a cosine collection cannot compare.", param=param)


def check_count(items: Sequence[Any], param: str) -> None:
    if not items:
        raise InvalidRequest(f"{param} must not be empty.", param=param)
    if len(items) > MAX_QUERIES:
        raise InvalidRequest(f"At most {MAX_QUERIES} {param} per search.", param=param)


def check_fusion(fusion: Any, top_k: int, queries: int) -> None:
    """A hybrid search's fusion parameters (service/domain/fusion.py), in range."""
    if not top_k <= fusion.candidates <= MAX_TOP_K:
        raise InvalidRequest(f"fusion.candidates must be between top_k ({top_k}) and {MAX_TOP_K}.", param="fusion")
    if queries * fusion.candidates > MAX_SEARCH_HITS:
        raise InvalidRequest(f"{queries} queries x fusion.candidates {fusion.candidates} asks for more than "
                             f"{MAX_SEARCH_HITS} hits from each branch: lower candidates or split the queries.",
                             param="fusion")
    if not 1 <= fusion.k <= MAX_RRF_K:
        raise InvalidRequest(f"fusion.k must be between 1 and {MAX_RRF_K}.", param="fusion")
    weights = (fusion.dense_weight, fusion.keyword_weight)
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise InvalidRequest("fusion.weights must be finite, not negative, and not both 0.", param="fusion")
    if not (math.isfinite(fusion.alpha) and 0 <= fusion.alpha <= 1):
        raise InvalidRequest("fusion.alpha must be between 0 and 1.", param="fusion")


def check_search_size(queries: int, top_k: int, with_vectors: bool, row: CollectionRow) -> None:
    """Bound the work and the answer of one search before doing any of it."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}.", param="top_k")
    if queries * top_k > MAX_SEARCH_HITS:
        raise InvalidRequest(f"{queries} queries x top_k {top_k} asks for more than {MAX_SEARCH_HITS} hits "
                             "in one search: lower top_k or split the queries.", param="top_k")
    if with_vectors and queries * top_k * row.dimension > MAX_RESPONSE_VALUES:
        raise InvalidRequest(f"{queries} queries x top_k {top_k} x dimension {row.dimension} vector values "
                             f"are more than {MAX_RESPONSE_VALUES} in one response: lower top_k, split the queries, "
                             "or leave `vector` out of include.", param="include")


def check_response_size(docs: Iterable[StoredDocument], param: str, *, text: bool, metadata: bool) -> None:
    """Refuse an answer whose stored text and metadata alone exceed MAX_RESPONSE_BYTES (characters count as
    bytes: a bound good enough to keep one request from taking the server's memory)."""
    size = sum((len(doc.text or "") if text else 0) + (len(doc.metadata_json) if metadata else 0) for doc in docs)
    if size > MAX_RESPONSE_BYTES:
        raise InvalidRequest(f"The documents of this answer hold about {size >> 20} MiB of text and metadata, more "
                             f"than the {MAX_RESPONSE_BYTES >> 20} MiB one response may carry: lower {param}"
                             + (", or leave text and metadata out of include." if param == "top_k" else "."),
                             param=param, code="response_too_large")


def _check_json(value: Any, where: str, depth: int = 1) -> None:
    """``depth``: the nesting level of ``value`` (the metadata object itself is level 1)."""
    if depth > MAX_METADATA_DEPTH and isinstance(value, (dict, list)):
        raise InvalidRequest(f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep.", param="documents")
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{where} contains a non-finite number.", param="documents")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, where)
            _check_json(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, where, depth + 1)


def documents(items: Sequence[DocumentInput], row: CollectionRow) -> list[NewDocument]:
    """Check a whole upsert before anything is written; texts without vectors keep ``vector=None``."""
    if not 1 <= len(items) <= MAX_DOCUMENTS:
        raise InvalidRequest(f"documents must hold 1 to {MAX_DOCUMENTS} documents, got {len(items)}.",
                             param="documents")
    docs: list[NewDocument] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"documents[{i}]"
        doc_id = item.id if item.id is not None else uuid.uuid4().hex
        if not 1 <= len(doc_id) <= MAX_ID_LENGTH:
            raise InvalidRequest(f"{where}.id must be 1 to {MAX_ID_LENGTH} characters.", param="documents")
        check_text(doc_id, f"{where}.id")
        if doc_id in seen:
            raise InvalidRequest(f"{where}.id `{doc_id}` appears twice in this call.", param="documents")
        seen.add(doc_id)
        if item.text is not None:
            check_text(item.text, f"{where}.text")
        values = None
        if item.vector is not None:
            values = vector(item.vector, row, f"{where}.vector", "documents")
        elif not item.text:
            raise InvalidRequest(f"{where} needs a vector or a non-empty text.", param="documents")
        elif row.model is None:
            raise InvalidRequest(
                f"{where} has text but no vector, and collection `{row.name}` has no model to embed it.",
                param="documents",
            )
        metadata = item.metadata or {}
        _check_json(metadata, f"{where}.metadata")
        docs.append(NewDocument(id=doc_id, text=item.text, metadata=metadata, vector=values))
    return docs
