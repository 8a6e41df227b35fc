"""Exact (brute-force) k-NN over an explicit candidate list, in bounded memory, with stable ties.

Used for filtered searches over small allowed sets, for rows an approximate index answered with fewer
than k results, and for ``search(..., exact=True)``; :func:`finish` turns any search's distances into
the scores VectorIndex returns, ordered by (score, id).
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

_MAX_SCORE_ELEMS = 1 << 24  # queries x candidates score block (64 MiB of float32)
_MAX_GATHER_ELEMS = 1 << 23  # candidates x dimension gathered at once (32 MiB of float32)
_PAD_TIE = np.iinfo(np.int64).max
_NO_ROWS = np.empty(0, dtype=np.int64)
# Extra results fetched beyond k so that ties at the k-th position can be ordered by id.
TIE_MARGIN = 8
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


def missing_score(metric: str) -> float:
    """The distance (and score) of a missing result: worse than any real one."""
    return np.inf if metric == "l2" else -np.inf


def with_ties(searcher, q: np.ndarray, k: int, n_avail: int, resolve: bool, metric: str):
    """Run searcher(q, kf) for kf a little above k so that equal scores straddling the k-th position
    can be ordered by id (FAISS cuts ties at k arbitrarily). With resolve (exact indexes), rows whose
    tie run reaches the last fetched column are searched again with a wider kf until the tie is closed.
    ``n_avail``: how many results exist at most."""
    kf = min(k + TIE_MARGIN, n_avail) if n_avail > k else k
    dist, ext = searcher(q, kf)
    ext = np.asarray(ext)
    while resolve and kf < n_avail:
        open_tie = dist[:, k - 1] == dist[:, -1]
        if not open_tie.any():
            break
        open_tie &= ext[:, -1] >= 0
        if not open_tie.any():
            break
        kf2 = min(4 * kf, n_avail)
        rows = np.flatnonzero(open_tie)
        d2, e2 = searcher(q[rows], kf2)
        dist, ext = widen(dist, ext, kf2, missing_score(metric))
        dist[rows], ext[rows] = d2, e2
        kf = kf2
    return dist, ext


def widen(dist: np.ndarray, ext: np.ndarray, width: int, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """Pad result arrays with missing entries up to ``width`` columns (copies)."""
    extra = width - dist.shape[1]
    if extra <= 0:
        return dist.copy(), ext.copy()
    dist = np.pad(np.asarray(dist, dtype=np.float32), ((0, 0), (0, extra)), constant_values=pad)
    ext = np.pad(np.asarray(ext, dtype=np.int64), ((0, 0), (0, extra)), constant_values=-1)
    return dist, ext


def finish(dist: np.ndarray, ext: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Distances -> scores (Euclidean, not squared, for l2), padding, and the top k per row ordered by
    (score, id): FAISS orders equal distances arbitrarily, and callers want stable results.

    FAISS returns each row sorted by distance, so nearly every row is its own answer already: only the
    rows :func:`_unordered_rows` finds (equal scores out of id order, a tie across the k-th position,
    anything unsorted) are sorted, with :func:`_sorted_topk`, which would give the others unchanged.
    ``ext`` itself is returned as the ids when it has k columns and needs no sorting.
    """
    dist = np.asarray(dist, dtype=np.float32)
    ext = np.asarray(ext, dtype=np.int64)
    scores = np.sqrt(np.maximum(dist, 0.0)) if metric == "l2" else dist.copy()
    scores[ext < 0] = missing_score(metric)
    descending = metric != "l2"
    if ext.shape[1] < k:
        return _sorted_topk(scores, ext, k, descending)
    rows = _unordered_rows(scores, ext, k, descending)
    top_scores, top_ids = scores[:, :k], ext[:, :k]
    if rows.size:
        top_scores, top_ids = top_scores.copy(), top_ids.copy()
        top_scores[rows], top_ids[rows] = _sorted_topk(scores[rows], ext[rows], k, descending)
    return np.ascontiguousarray(top_scores), np.ascontiguousarray(top_ids)


def _unordered_rows(scores: np.ndarray, ext: np.ndarray, k: int, descending: bool) -> np.ndarray:
    """Rows whose first k columns (k <= columns) may not be their top k in (score, id) order.

    A row's first k columns are its top k when its scores are sorted (NaN is not), each run of equal
    scores among those columns is in ascending id order (missing entries, id -1, after every id) and the
    k-th score differs from the next one: a stable sort by (score, id), which :func:`select_topk` is,
    leaves such a row's first k columns where they are. Rows failing a condition are returned even
    where sorting would keep them as they are: they are rare, and the checks stay vectorised. Nearly
    every answer passes the first check alone: scores strictly sorted, no ties at all.
    """
    later, earlier = scores[:, 1:], scores[:, :-1]
    if ((later < earlier) if descending else (later > earlier)).all():
        return _NO_ROWS
    in_order = (later <= earlier) if descending else (later >= earlier)
    cut = min(k + 1, scores.shape[1])
    tied = scores[:, 1:cut] == scores[:, : cut - 1]  # tied[:, j]: columns j and j+1, j < k
    bad = ~in_order.all(axis=1)
    if cut > k:
        bad |= tied[:, k - 1]
    ids = np.where(ext[:, :k] < 0, _PAD_TIE, ext[:, :k])
    bad |= (tied[:, : k - 1] & (ids[:, 1:] < ids[:, :-1])).any(axis=1)
    return np.flatnonzero(bad)


def _sorted_topk(scores: np.ndarray, ext: np.ndarray, k: int, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each row of (scores, ids), missing entries padded already, sorted by (score, id)."""
    missing = ext < 0
    key = -scores if descending else scores
    order = select_topk(np.where(missing, np.inf, key), np.where(missing, _PAD_TIE, ext), k)
    scores = np.take_along_axis(scores, order, axis=1)
    ext = np.take_along_axis(ext, order, axis=1)
    if ext.shape[1] < k:
        scores, ext = widen(scores, ext, k, -np.inf if descending else np.inf)
    return scores, ext
