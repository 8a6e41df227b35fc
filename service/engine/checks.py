"""Every call from an HTTP worker, checked by the engine process itself, as if it came from the internet.

The workers validate each request before it reaches the engine (service/domain/validation.py), so none of
these checks fails for a request the HTTP layer admitted; they hold the engine to the same bounds
(service/limits.py, the model's limits, the collection's dimension) whoever built the frame, so that no
frame can make it allocate past what one request may (a ``k`` of 10^9), read past a model's vocabulary,
or search a collection with vectors of another size. Each failure is an InvalidRequest (a 400 for the
worker's client). Writes need no content check: an Apply carries a position only, and the engine reads
what was committed from SQL (service/engine/indexes.py ``apply``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from service.engine import protocol as p
from service.errors import InvalidRequest
from service.limits import MAX_KEY_LENGTH, MAX_QUERIES, MAX_SEARCH_HITS, MAX_TOP_K

if TYPE_CHECKING:
    from service.engine.engine import Engine


def check_call(engine: Engine, request: p.Request) -> None:
    """InvalidRequest unless ``request`` is within every bound a request from the HTTP layer keeps to."""
    match request:
        case p.Embed(model, sequences, key):
            _check_embed(engine, model, sequences, key)
        case p.Search(collection, queries, k, _):
            vectors = _vectors(queries, engine.collection(collection).dimension)
            _check_k(k, len(vectors))
        case p.KeywordSearch(collection, queries, k, _):
            engine.collection(collection)
            if not 1 <= len(queries) <= MAX_QUERIES or not all(isinstance(q, str) and q for q in queries):
                raise InvalidRequest(f"keyword queries must be 1 to {MAX_QUERIES} non-empty strings.", param="keyword")
            if sum(map(len, queries)) > engine.max_body_bytes:
                raise InvalidRequest("keyword queries are longer than a request body may be.", param="keyword")
            _check_k(k, len(queries))
        case p.Apply(_, position):
            if position < 0:
                raise InvalidRequest("a write-log position is never negative.")


def _vectors(queries: p.Array, dimension: int) -> np.ndarray:
    if queries.dtype != "<f4" or len(queries.shape) != 2:
        raise InvalidRequest("query vectors travel as a 2-d array of little-endian float32.", param="vector")
    n, d = queries.shape
    if not 1 <= n <= MAX_QUERIES:
        raise InvalidRequest(f"A search holds 1 to {MAX_QUERIES} query vectors.", param="vectors")
    if d != dimension:
        raise InvalidRequest(f"query vectors have {d} dimensions; the collection has {dimension}.", param="vector")
    if len(queries.data) != n * d * 4:
        raise InvalidRequest("query vectors: the data does not fill the shape.", param="vector")
    vectors = queries.numpy()
    if not np.isfinite(vectors).all():
        raise InvalidRequest("query vectors must be finite.", param="vector")
    return vectors


def _check_k(k: int, queries: int) -> None:
    if not 1 <= k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}.", param="top_k")
    if queries * k > MAX_SEARCH_HITS:
        raise InvalidRequest(f"{queries} queries x top_k {k} asks for more than {MAX_SEARCH_HITS} hits.",
                             param="top_k")


def _check_embed(engine: Engine, model: str, sequences: list[list[int]], key: str) -> None:
    served = engine.model(model)  # NotFound, or Unavailable while it loads
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"a fairness key is at most {MAX_KEY_LENGTH} characters.")
    if not 1 <= len(sequences) <= engine.max_inputs:
        raise InvalidRequest(f"1 to {engine.max_inputs} inputs per request.", param="input")
    total = 0
    for i, ids in enumerate(sequences):
        if not 1 <= len(ids) <= served.spec.max_tokens:
            raise InvalidRequest(f"input[{i}] has {len(ids)} tokens; 1 to {served.spec.max_tokens} are allowed.",
                                 param="input", code="context_length_exceeded")
        if min(ids) < 0 or max(ids) >= served.vocab_size:
            raise InvalidRequest(f"input[{i}] has a token id outside the vocabulary (0..{served.vocab_size - 1}).",
                                 param="input")
        total += len(ids)
    if total > engine.max_request_tokens:
        raise InvalidRequest(f"input has {total} tokens in all; at most {engine.max_request_tokens} per request.",
                             param="input", code="max_tokens_per_request")
