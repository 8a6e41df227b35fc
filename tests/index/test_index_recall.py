"""Search-quality defaults: HNSW32 recall@10 on 20k random 64-d vectors, IVF nprobe on clustered data."""

import numpy as np
import pytest
from faiss.contrib.evaluation import knn_intersection_measure
from faiss.contrib.exhaustive_search import knn_ground_truth

import faiss

from index import Tuning, VectorIndex, build
from _index_helpers import clustered

pytestmark = pytest.mark.unit

N, D, NQ, K = 20_000, 64, 200, 10


@pytest.fixture(scope="module")
def hnsw_setup():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, D)).astype(np.float32)
    q = rng.standard_normal((NQ, D)).astype(np.float32)
    ids = (np.arange(N) * 3 + 11).astype(np.int64)  # ids are not positions
    vi = VectorIndex(D, "l2", "HNSW32")
    vi.upsert(ids, x)
    return vi, ids, x, q


def _ground_truth(x, q, k=K):
    _, pos = knn_ground_truth(q, iter([x]), k, metric_type=faiss.METRIC_L2)
    return pos


def test_hnsw_recall_unfiltered(hnsw_setup):
    vi, ids, x, q = hnsw_setup
    gt = ids[_ground_truth(x, q)]
    _, got = vi.search(q, K)
    recall = knn_intersection_measure(got, gt)
    assert recall >= 0.95, recall


@pytest.mark.parametrize("force_index_path", [False, True])
def test_hnsw_recall_filtered_10_percent(hnsw_setup, force_index_path):
    vi, ids, x, q = hnsw_setup
    keep = np.sort(np.random.default_rng(3).choice(N, N // 10, replace=False))
    gt = ids[keep][_ground_truth(x[keep], q)]
    if force_index_path:  # the HNSW + IDSelectorBitmap path instead of brute force
        vi.tuning = Tuning(exact_search_min_ids=0, exact_search_fraction=0.0)
    try:
        _, got = vi.search(q, K, allowed=ids[keep])
    finally:
        vi.tuning = Tuning()
    assert np.isin(got, ids[keep]).all() and (got >= 0).all()
    recall = knn_intersection_measure(got, gt)
    assert recall >= 0.95, recall
    if not force_index_path:
        assert recall == 1.0  # 2,000 allowed ids: answered exactly


def test_hnsw_recall_with_tombstones(hnsw_setup):
    vi, ids, x, q = hnsw_setup
    vi.tuning = Tuning(compact_threshold=1.0)
    removed = np.arange(0, N, 7)
    try:
        vi.remove(ids[removed])
        keep = np.setdiff1d(np.arange(N), removed)
        gt = ids[keep][_ground_truth(x[keep], q)]
        _, got = vi.search(q, K)
        assert not np.isin(got, ids[removed]).any()
        assert knn_intersection_measure(got, gt) >= 0.95
    finally:
        vi.tuning = Tuning()
        vi.upsert(ids[removed], x[removed])


def test_ivf_default_nprobe_recall_on_clustered_data():
    rng = np.random.default_rng(11)
    x = clustered(rng, 12_000, 32, n_clusters=100, spread=0.3)
    q = x[rng.integers(0, len(x), NQ)] + 0.1 * rng.standard_normal((NQ, 32)).astype(np.float32)
    ids = np.arange(len(x), dtype=np.int64)
    vi = build(32, "l2", "IVF256,Flat", ids, x, progress=False)
    assert vi.stats()["is_trained"] and vi.stats()["nprobe"] == 16
    gt = _ground_truth(x, q)
    recall = knn_intersection_measure(vi.search(q, K)[1], gt)
    assert recall >= 0.9, recall
