"""Helpers for the index tests: exact numpy reference search and a tie-aware comparison."""

from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_knn(db_ids, db_vecs, queries, k, metric):
    """Exact top-(k+1) in float64: (scores, ids), best first, ties by id, padded with -1/nan."""
    db_ids = np.asarray(db_ids, dtype=np.int64)
    x = np.asarray(db_vecs, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    if metric == "cosine":
        x, q = normalize(x), normalize(q)
    if metric == "l2":
        scores = np.sqrt(np.maximum(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0))
        keys = scores
    else:
        scores = q @ x.T
        keys = -scores
    kk = k + 1
    out_s = np.full((len(q), kk), np.nan)
    out_i = np.full((len(q), kk), -1, dtype=np.int64)
    for r in range(len(q)):
        order = np.lexsort((db_ids, keys[r]))[:kk]
        out_s[r, : order.size] = scores[r, order]
        out_i[r, : order.size] = db_ids[order]
    return out_s, out_i


def assert_topk_equal(scores, ids, ref_scores, ref_ids, atol=1e-4):
    """scores/ids [nq,k] must be the exact top-k of the reference (computed with k+1 columns).

    Ids may differ only where the reference has a near-tie (|score difference| <= atol).
    """
    nq, k = ids.shape
    ref_s, ref_i = ref_scores[:, :k], ref_ids[:, :k]
    np.testing.assert_array_equal(ids == -1, ref_i == -1, err_msg="padding differs")
    valid = ref_i >= 0
    np.testing.assert_allclose(scores[valid], ref_s[valid], atol=atol, rtol=1e-4)
    for r in range(nq):
        live = ids[r][ids[r] >= 0]
        assert np.unique(live).size == live.size, f"duplicate ids in row {r}: {ids[r]}"
        for j in np.flatnonzero(ids[r] != ref_i[r]):
            others = np.delete(ref_scores[r], j)
            tied = np.any(np.abs(others[~np.isnan(others)] - ref_s[r, j]) <= atol)
            assert tied, f"row {r} col {j}: got id {ids[r, j]}, expected {ref_i[r, j]} (no tie)"


def recall_at_k(ids, ref_ids):
    k = ids.shape[1]
    hits = sum(np.intersect1d(a[a >= 0], b[:k][b[:k] >= 0]).size for a, b in zip(ids, ref_ids))
    return hits / max(1, (ref_ids[:, :k] >= 0).sum())


def clustered(rng, n, d, n_clusters=50, spread=0.15):
    centers = rng.standard_normal((n_clusters, d)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    return (centers[labels] + spread * rng.standard_normal((n, d))).astype(np.float32)
