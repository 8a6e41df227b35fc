"""Every index family: HNSW (tombstones + compaction), IVF (before/after training), PQ, SQ."""

import logging

import numpy as np
import pytest

from dataclasses import replace

from index import Tuning, VectorIndex
from _index_helpers import assert_topk_equal, clustered, recall_at_k, reference_knn

pytestmark = pytest.mark.unit

D = 16


def _data(rng, n, d=D):
    return rng.standard_normal((n, d)).astype(np.float32), rng.permutation(10 * n)[:n].astype(np.int64)


# ----------------------------------------------------------------------------- HNSW
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_hnsw_matches_numpy(rng, metric):
    x, ids = _data(rng, 2000)
    q = rng.standard_normal((40, D)).astype(np.float32)
    vi = VectorIndex(D, metric, "HNSW32")
    stats = vi.stats()
    assert (stats["ef_search"], stats["ef_construction"], stats["nprobe"]) == (128, 128, None)
    vi.upsert(ids, x)
    s, i = vi.search(q, 10)
    ref_s, ref_i = reference_knn(ids, x, q, 10, metric)
    assert recall_at_k(i, ref_i) >= 0.98
    # scores are the true scores of the returned ids
    by_id = dict(zip(ids.tolist(), range(len(ids))))
    true_s, _ = reference_knn(i[0], x[[by_id[v] for v in i[0]]], q[:1], 10, metric)
    np.testing.assert_allclose(s[0], true_s[0, :10], rtol=1e-4, atol=1e-4)
    # exact=True is brute force over the stored vectors
    assert_topk_equal(*vi.search(q, 10, exact=True), ref_s, ref_i)


def test_hnsw_updates_become_tombstones_and_auto_compact(rng, caplog):
    x, ids = _data(rng, 1000)
    vi = VectorIndex(D, "l2", "HNSW32")
    vi.upsert(ids, x)
    assert vi.stats()["deleted_fraction"] == 0
    # replacing 100 vectors leaves 100 tombstones out of 1100 stored vectors
    new = rng.standard_normal((100, D)).astype(np.float32)
    vi.upsert(ids[:100], new)
    assert len(vi) == 1000 and vi.stats()["deleted_fraction"] == pytest.approx(100 / 1100)
    s, i = vi.search(new, 5)
    assert (i[:, 0] == ids[:100]).all() and np.allclose(s[:, 0], 0, atol=1e-3)
    _, i = vi.search(x[:100], 1000)
    assert all(np.unique(row).size == 1000 for row in i)  # no duplicates, everything reachable
    # deleting 200 more crosses 0.2 (300/1100): compaction runs inside remove()
    with caplog.at_level(logging.INFO, logger="index"):
        assert vi.remove(ids[100:300]) == 200
    assert "compacted" in caplog.text
    assert vi.stats()["deleted_fraction"] == 0 and vi.stats()["stored"] == 800 == len(vi)
    np.testing.assert_array_equal(vi.ids(), np.sort(ids[np.r_[0:100, 300:1000]]))
    ref = reference_knn(
        np.r_[ids[:100], ids[300:]], np.r_[new, x[300:]], x[:30], 10, "l2"
    )
    assert recall_at_k(vi.search(x[:30], 10)[1], ref[1]) >= 0.98
    np.testing.assert_allclose(vi.get_vectors(ids[:100]), new)


def test_hnsw_excludes_tombstones_itself(rng, monkeypatch):
    """Below the compaction threshold, tombstones are filtered inside the HNSW search (IDSelector),
    with no brute-force fallback needed."""
    x, ids = _data(rng, 2000)
    vi = VectorIndex(D, "l2", "HNSW32")
    vi.upsert(ids, x)
    vi.remove(ids[::6])  # ~17% tombstones: no compaction yet
    assert 0.15 < vi.stats()["deleted_fraction"] < 0.2

    def no_fallback(*args, **kwargs):
        raise AssertionError("exact fallback used")

    monkeypatch.setattr(VectorIndex, "_search_exact", no_fallback)
    q = np.r_[x[::6][:20], rng.standard_normal((20, D)).astype(np.float32)]
    s, i = vi.search(q, 100)
    assert (i >= 0).all() and not np.isin(i, ids[::6]).any()
    live = np.setdiff1d(np.arange(2000), np.arange(0, 2000, 6))
    assert recall_at_k(i, reference_knn(ids[live], x[live], q, 100, "l2")[1]) >= 0.97


def test_hnsw_many_tombstones_still_returns_k(rng):
    x, ids = _data(rng, 2000)
    vi = VectorIndex(D, "cosine", "HNSW16", tuning=Tuning(compact_threshold=1.0))  # keep every tombstone
    vi.upsert(ids, x)
    keep = rng.permutation(2000)[:100]
    dead = np.setdiff1d(np.arange(2000), keep)
    assert vi.remove(ids[dead]) == 1900
    assert vi.stats()["deleted_fraction"] == pytest.approx(0.95)
    q = rng.standard_normal((20, D)).astype(np.float32)
    s, i = vi.search(q, 10)
    assert (i >= 0).all(), "every row must have k results despite 95% tombstones"
    assert np.isin(i, ids[keep]).all()
    assert_topk_equal(s, i, *reference_knn(ids[keep], x[keep], q, 10, "cosine"))
    # a lower threshold compacts at the next write (here: rewriting one vector as it is)
    vi.tuning = replace(vi.tuning, compact_threshold=0.5)
    assert vi.stats()["tombstones"] == 1900
    vi.upsert(ids[keep[:1]], x[keep[:1]])
    assert vi.stats()["deleted_fraction"] == 0 and vi.stats()["stored"] == 100 == len(vi)
    assert_topk_equal(*vi.search(q, 10), *reference_knn(ids[keep], x[keep], q, 10, "cosine"))


def test_hnsw_reinsert_after_delete(rng):
    x, ids = _data(rng, 300)
    vi = VectorIndex(D, "l2", "HNSW32")
    vi.upsert(ids, x)
    vi.remove(ids[:10])
    vi.upsert(ids[:10], x[:10] + 1)
    assert len(vi) == 300
    s, i = vi.search(x[:10] + 1, 1)
    np.testing.assert_array_equal(i[:, 0], ids[:10])


def test_search_time_ef_override(rng):
    x, ids = _data(rng, 3000, 32)
    vi = VectorIndex(32, "l2", "HNSW32", tuning=Tuning(ef_construction=40))
    vi.upsert(ids, x)
    q = rng.standard_normal((50, 32)).astype(np.float32)
    ref = reference_knn(ids, x, q, 10, "l2")[1]
    low = recall_at_k(vi.search(q, 10, ef_search=10)[1], ref)
    high = recall_at_k(vi.search(q, 10, ef_search=400)[1], ref)
    assert high >= 0.97 and high > low
    vi.tuning = replace(vi.tuning, ef_search=400)
    assert recall_at_k(vi.search(q, 10)[1], ref) == high


# ----------------------------------------------------------------------------- IVF
def test_ivf_before_and_after_training(rng, caplog):
    x = clustered(rng, 1500, D, n_clusters=30)
    ids = np.arange(1500) * 7
    q = x[rng.integers(0, 1500, 30)] + 0.05 * rng.standard_normal((30, D)).astype(np.float32)
    vi = VectorIndex(D, "l2", "IVF16,Flat")
    stats = vi.stats()
    assert stats["min_train_size"] == 16 * 39 and stats["nprobe"] == 8 and not stats["is_trained"]
    vi.upsert(ids[:600], x[:600])
    assert not vi.stats()["is_trained"] and len(vi) == 600
    # untrained: served exactly from the flat side index, updates and deletes included
    vi.upsert(ids[:5], x[600:605])
    vi.remove(ids[5:10])
    live_ids = np.r_[ids[:5], ids[10:600]]
    live_x = np.r_[x[600:605], x[10:600]]
    assert_topk_equal(*vi.search(q, 10), *reference_knn(live_ids, live_x, q, 10, "l2"))
    with caplog.at_level(logging.INFO, logger="index"):
        vi.upsert(ids[600:], x[600:])  # crosses 624 -> trains and moves everything
    assert vi.stats()["is_trained"] and "training" in caplog.text
    assert len(vi) == 1495 and vi.stats()["stored"] == 1495
    live_ids = np.r_[ids[:5], ids[10:]]
    live_x = np.r_[x[600:605], x[10:]]
    ref = reference_knn(live_ids, live_x, q, 10, "l2")
    assert_topk_equal(*vi.search(q, 10, nprobe=16), *ref)  # all lists probed = exact
    assert recall_at_k(vi.search(q, 10)[1], ref[1]) >= 0.9
    # native removal and replacement after training
    assert vi.remove(ids[10:20]) == 10
    vi.upsert(ids[:5], x[:5])
    live_ids = np.r_[ids[:5], ids[20:]]
    live_x = np.r_[x[:5], x[20:]]
    assert_topk_equal(*vi.search(q, 10, nprobe=16), *reference_knn(live_ids, live_x, q, 10, "l2"))
    assert vi.stats()["deleted_fraction"] == 0


def test_ivf_short_lists_fall_back_to_exact(rng):
    x, ids = _data(rng, 700)
    vi = VectorIndex(D, "cosine", "IVF16,Flat", tuning=Tuning(nprobe=1))
    vi.upsert(ids, x)
    assert vi.stats()["is_trained"] and vi.stats()["nprobe"] == 1
    q = rng.standard_normal((10, D)).astype(np.float32)
    s, i = vi.search(q, 300)  # one list holds ~44 vectors: the rows are completed exactly
    assert (i >= 0).all()
    assert_topk_equal(s, i, *reference_knn(ids, x, q, 300, "cosine"))


def test_training_thresholds():
    def stats(factory, **kwargs):
        return VectorIndex(64, "l2", factory, **kwargs).stats()

    assert stats("IVF1024,Flat")["min_train_size"] == 1024 * 39
    assert stats("IVF256,PQ16")["min_train_size"] == 9984
    assert stats("PQ16")["min_train_size"] == 9984
    assert stats("IVF64,SQ8")["min_train_size"] == 64 * 39
    assert stats("Flat")["min_train_size"] == 0
    assert stats("Flat", tuning=Tuning(min_train_size=10))["min_train_size"] == 0  # nothing to train
    assert stats("IVF64,SQ8", tuning=Tuning(min_train_size=5000))["min_train_size"] == 5000
    assert stats("IVF1024,Flat")["nprobe"] == 32


def test_min_train_size_from_tuning(rng):
    x, ids = _data(rng, 700)
    vi = VectorIndex(D, "l2", "IVF16,Flat", tuning=Tuning(min_train_size=650))
    vi.upsert(ids[:640], x[:640])
    assert not vi.stats()["is_trained"]  # 624 would have trained it
    vi.upsert(ids[640:], x[640:])
    assert vi.stats()["is_trained"] and vi.stats()["min_train_size"] == 0 and len(vi) == 700


@pytest.mark.parametrize("factory", ["IVF16,PQ8x4", "PQ8x4", "IVF16,SQ8", "HNSW16,SQ8", "IVF16,PQ8x4,RFlat"])
def test_compressed_indexes(rng, factory):
    """Lossy codecs: results must be the exact top-k over the *stored* (reconstructed) vectors."""
    x, ids = _data(rng, 1200)
    q = rng.standard_normal((20, D)).astype(np.float32)
    vi = VectorIndex(D, "l2", factory)
    assert not vi.stats()["is_trained"]
    vi.upsert(ids[:300], x[:300])
    assert_topk_equal(*vi.search(q, 10), *reference_knn(ids[:300], x[:300], q, 10, "l2"))
    vi.upsert(ids[300:], x[300:])
    assert vi.stats()["is_trained"] and len(vi) == 1200
    vi.upsert(ids[:50], x[:50] * 2)  # replace
    assert vi.remove(ids[50:100]) == 50
    live = np.r_[ids[:50], ids[100:]]
    stored = vi.get_vectors(live)
    assert recall_at_k(vi.search(q, 10)[1], reference_knn(live, stored, q, 10, "l2")[1]) >= 0.6
    kw = {"nprobe": 16} if vi.stats()["nprobe"] else {"ef_search": 1200} if vi.stats()["ef_search"] else {}
    s, i = vi.search(q, 10, **kw)
    assert np.isin(i, live).all() and (i >= 0).all()
    ref_s, ref_i = reference_knn(live, stored, q, 10, "l2")
    if "RFlat" in factory:  # re-ranks only the k PQ candidates (k_factor 1): not exhaustive
        assert recall_at_k(i, ref_i) >= 0.75
    else:
        assert recall_at_k(i, ref_i) >= 0.9
        np.testing.assert_allclose(s, ref_s[:, :10], rtol=0.05, atol=0.05)
    # filtered search over a small allowed set is exact over the stored vectors
    allowed = live[::40]
    s, i = vi.search(q, 5, allowed=allowed)
    assert_topk_equal(s, i, *reference_knn(allowed, vi.get_vectors(allowed), q, 5, "l2"), atol=1e-3)
