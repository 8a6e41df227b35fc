"""Exact (brute-force) k-NN over an explicit candidate list, in bounded memory, with stable ties.

Used for filtered searches over small allowed sets, for rows an approximate index answered with fewer
than k results, and for ``search(..., exact=True)``.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

_MAX_SCORE_ELEMS = 1 << 24  # queries x candidates score block (64 MiB of float32)
_MAX_GATHER_ELEMS = 1 << 23  # candidates x dimension gathered at once (32 MiB of float32)
_PAD_TIE = np.iinfo(np.int64).max
# numpy's BLAS spreads each product over every core, and products called from several threads at once
# thrash: a 1x640 by 640x10k product took 12 ms per call from 8 threads against 0.75 ms alone (2
# cores). Searches run in worker threads, so their products take turns; each still uses every core.
_BLAS_TURN = threading.Lock()


def select_topk(keys: np.ndarray, tiebreak: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k smallest ``keys`` per row, ordered by (key, tiebreak).

    keys: [nq, c] float; tiebreak: [nq, c] int64. Returns [nq, min(k, c)]. Exact with ties: every entry
    equal to the k-th key takes part in the ordering, so the result is the true lexicographic top-k.
    """
    nq, c = keys.shape
    kk = min(k, c)
    if nq == 0 or kk == 0:
        return np.empty((nq, kk), dtype=np.int64)
    if c > k:
        kth = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
        mask = keys <= kth
    else:
        mask = np.ones(keys.shape, dtype=bool)
    rows, cols = np.nonzero(mask)
    order = np.lexsort((tiebreak[rows, cols], keys[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    counts = np.bincount(rows, minlength=nq)
    starts = np.cumsum(counts) - counts
    rank = np.arange(rows.size) - starts[rows]
    return cols[rank < kk].reshape(nq, kk)


def exact_knn(
    queries: np.ndarray,
    fetch: Callable[[int, int], np.ndarray],
    n: int,
    dimension: int,
    k: int,
    inner_product: bool,
    tiebreak: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against candidates 0..n-1.

    fetch(a, b) returns the float32 vectors of candidates a..b-1. tiebreak[i] (int64, usually the id)
    orders equal scores. Returns (distances, positions), both [nq, k]: distances are inner products
    (descending) or squared L2 (ascending); missing entries have position -1 and distance -inf / +inf.
    """
    nq = queries.shape[0]
    best_key = np.full((nq, k), np.inf, dtype=np.float32)
    best_pos = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return _to_dist(best_key, inner_product), best_pos
    chunk = max(256, min(_MAX_SCORE_ELEMS // max(nq, 1), _MAX_GATHER_ELEMS // max(dimension, 1)))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    q_norm = None if inner_product else np.einsum("ij,ij->i", q, q)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x = np.ascontiguousarray(fetch(a, b), dtype=np.float32)
        with _BLAS_TURN:
            dots = q @ x.T
        if inner_product:
            key = -dots
        else:
            key = q_norm[:, None] + np.einsum("ij,ij->i", x, x)[None, :] - 2.0 * dots
            np.maximum(key, 0.0, out=key)
        pos = np.arange(a, b, dtype=np.int64)
        all_key = np.concatenate([best_key, key.astype(np.float32, copy=False)], axis=1)
        all_pos = np.concatenate([best_pos, np.broadcast_to(pos, (nq, b - a))], axis=1)
        tb = np.where(all_pos >= 0, tiebreak[np.maximum(all_pos, 0)], _PAD_TIE)
        cols = select_topk(all_key, tb, k)
        best_key = np.take_along_axis(all_key, cols, axis=1)
        best_pos = np.take_along_axis(all_pos, cols, axis=1)
        if best_key.shape[1] < k:  # fewer candidates than k so far (cannot happen after the first pad)
            pad = k - best_key.shape[1]
            best_key = np.pad(best_key, ((0, 0), (0, pad)), constant_values=np.inf)
            best_pos = np.pad(best_pos, ((0, 0), (0, pad)), constant_values=-1)
    return _to_dist(best_key, inner_product), best_pos


def _to_dist(key: np.ndarray, inner_product: bool) -> np.ndarray:
    return (-key if inner_product else key).astype(np.float32)
