"""finish(): the fast path for rows FAISS already ordered gives exactly what sorting every row gives."""

import numpy as np
import pytest

from index.exact import _PAD_TIE, finish, missing_score, select_topk, widen

pytestmark = pytest.mark.unit


def reference_finish(dist, ext, k, metric):
    """Every row sorted by (score, id), missing entries last: the definition finish() must meet."""
    dist = np.asarray(dist, dtype=np.float32)
    ext = np.asarray(ext, dtype=np.int64)
    missing = ext < 0
    scores = np.sqrt(np.maximum(dist, 0.0)) if metric == "l2" else dist.copy()
    scores[missing] = missing_score(metric)
    key = scores if metric == "l2" else -scores
    order = select_topk(np.where(missing, np.inf, key), np.where(missing, _PAD_TIE, ext), k)
    scores = np.take_along_axis(scores, order, axis=1)
    ext = np.take_along_axis(ext, order, axis=1)
    if ext.shape[1] < k:
        scores, ext = widen(scores, ext, k, missing_score(metric))
    return scores, ext


def faiss_like(rng, nq, cols, metric, levels, missing_share, shuffle_share):
    """Rows as FAISS returns them: sorted by distance, equal distances in any id order, missing (-1)
    entries last; a share of the rows left unsorted, which finish() must also handle."""
    dist = rng.integers(0, levels, size=(nq, cols)).astype(np.float32) / 4
    dist = np.sort(dist, axis=1)
    if metric != "l2":
        dist = dist[:, ::-1].copy()
    ext = np.stack([rng.permutation(10 * cols)[:cols] for _ in range(nq)]).astype(np.int64)
    n_missing = (rng.random(nq) < missing_share) * rng.integers(0, cols + 1, size=nq)
    for row, m in enumerate(n_missing):
        if m:
            ext[row, cols - m :] = -1
            dist[row, cols - m :] = np.inf if metric == "l2" else -np.inf
    for row in np.flatnonzero(rng.random(nq) < shuffle_share):
        perm = rng.permutation(cols)
        dist[row], ext[row] = dist[row, perm], ext[row, perm]
    return dist, ext


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("levels", [3, 40, 100_000])  # many ties, some, almost none
def test_finish_equals_sorting_every_row(metric, levels):
    rng = np.random.default_rng(levels)
    for k, cols in [(1, 1), (1, 9), (5, 5), (5, 13), (10, 18), (10, 4), (32, 40)]:
        dist, ext = faiss_like(rng, 200, cols, metric, levels, missing_share=0.2, shuffle_share=0.05)
        got_scores, got_ids = finish(dist, ext, k, metric)
        want_scores, want_ids = reference_finish(dist, ext, k, metric)
        assert got_ids.shape == (200, k)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_scores, want_scores)
        assert got_scores.dtype == np.float32 and got_ids.dtype == np.int64
