"""Filtered search returns the true top-k among the allowed ids (never fewer than available)."""

import numpy as np
import pytest


from dataclasses import replace

from index import Tuning, VectorIndex
from _index_helpers import assert_topk_equal, recall_at_k, reference_knn

pytestmark = pytest.mark.unit

D = 16
LOSSLESS = ["Flat", "HNSW32", "IVF16,Flat"]


def _index(rng, factory, metric, n=3000):
    x = rng.standard_normal((n, D)).astype(np.float32)
    ids = rng.permutation(20 * n)[:n].astype(np.int64)
    vi = VectorIndex(D, metric, factory)
    vi.upsert(ids, x)
    return vi, ids, x


@pytest.mark.parametrize("factory", LOSSLESS)
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_small_allowed_set_is_exact(rng, factory, metric, monkeypatch):
    vi, ids, x = _index(rng, factory, metric)
    sel = rng.choice(len(ids), 60, replace=False)
    q = rng.standard_normal((15, D)).astype(np.float32)
    if factory != "Flat":  # approximate indexes must not be asked: brute force over the 60 vectors
        monkeypatch.setattr(vi._store.index, "search", None)
    s, i = vi.search(q, 10, allowed=ids[sel])
    assert np.isin(i, ids[sel]).all()
    assert_topk_equal(s, i, *reference_knn(ids[sel], x[sel], q, 10, metric))


@pytest.mark.parametrize("factory", LOSSLESS)
def test_large_allowed_set_uses_the_index(rng, factory, monkeypatch):
    vi, ids, x = _index(rng, factory, "l2")
    vi.tuning = Tuning(exact_search_min_ids=1000)  # default 4096 would cover this small test index
    sel = np.flatnonzero(rng.random(len(ids)) < 0.6)  # above every exact-search threshold
    assert sel.size > vi.tuning.exact_search_fraction * len(vi) and sel.size > vi.tuning.exact_search_min_ids

    def no_brute_force(*args, **kwargs):
        raise AssertionError("brute force used for a large allowed set")

    monkeypatch.setattr(VectorIndex, "_search_exact", no_brute_force)
    q = rng.standard_normal((30, D)).astype(np.float32)
    s, i = vi.search(q, 10, allowed=ids[sel])
    assert (i >= 0).all() and np.isin(i, ids[sel]).all()
    ref = reference_knn(ids[sel], x[sel], q, 10, "l2")
    if factory == "Flat":
        assert_topk_equal(s, i, *ref)
    else:
        assert recall_at_k(i, ref[1]) >= 0.95


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat"])
def test_index_path_with_selector_when_exact_disabled(rng, factory):
    """Force the FAISS IDSelector path even for a 5% filter: still k results, all allowed."""
    vi, ids, x = _index(rng, factory, "cosine")
    vi.tuning = Tuning(exact_search_min_ids=0, exact_search_fraction=0.0)
    sel = rng.choice(len(ids), 150, replace=False)
    q = rng.standard_normal((30, D)).astype(np.float32)
    s, i = vi.search(q, 10, allowed=ids[sel])
    assert (i >= 0).all() and np.isin(i, ids[sel]).all()
    assert recall_at_k(i, reference_knn(ids[sel], x[sel], q, 10, "cosine")[1]) >= 0.9


def test_allowed_ids_unknown_removed_and_fewer_than_k(rng):
    vi, ids, x = _index(rng, "HNSW32", "l2", n=500)
    vi.remove(ids[:3])
    allowed = np.r_[ids[:3], ids[3:7], 10**15, ids[5]]  # 3 removed, 4 live, 1 unknown, 1 duplicate
    s, i = vi.search(x[:2], 6, allowed=allowed)
    assert (np.sort(i[:, :4], axis=1) == np.sort(ids[3:7])).all()
    assert (i[:, 4:] == -1).all() and np.isinf(s[:, 4:]).all()
    assert_topk_equal(s, i, *reference_knn(ids[3:7], x[3:7], x[:2], 6, "l2"))
    s, i = vi.search(x[:2], 3, allowed=np.array([], dtype=np.int64))
    assert (i == -1).all()


def test_filter_on_tombstoned_hnsw(rng):
    vi, ids, x = _index(rng, "HNSW32", "dot", n=2000)
    vi.tuning = Tuning(compact_threshold=1.0)
    vi.remove(ids[::2])  # 50% tombstones
    sel = np.arange(1, 2000, 2)[:800]  # 800 live, allowed
    q = rng.standard_normal((20, D)).astype(np.float32)
    for min_ids in (4096, 0):  # exact path, then the HNSW selector path (bitmap & live)
        vi.tuning = replace(vi.tuning, exact_search_min_ids=min_ids)
        s, i = vi.search(q, 10, allowed=np.r_[ids[sel], ids[::2][:50]])
        assert (i >= 0).all() and np.isin(i, ids[sel]).all()
        assert recall_at_k(i, reference_knn(ids[sel], x[sel], q, 10, "dot")[1]) >= 0.95


def test_filtered_untrained_ivf_is_exact(rng):
    vi, ids, x = _index(rng, "IVF64,Flat", "cosine", n=1000)
    assert not vi.stats()["is_trained"]
    sel = rng.choice(1000, 500, replace=False)
    q = rng.standard_normal((10, D)).astype(np.float32)
    assert_topk_equal(*vi.search(q, 10, allowed=ids[sel]), *reference_knn(ids[sel], x[sel], q, 10, "cosine"))


def test_ties_are_ordered_by_id():
    vi = VectorIndex(4, "l2", "Flat")
    v = np.array([[1, 0, 0, 0]], np.float32)
    vi.upsert([50, 10, 30, 20, 40], np.repeat(v, 5, axis=0))
    vi.upsert([5], [[0, 1, 0, 0]])
    s, i = vi.search(v, 3)
    np.testing.assert_array_equal(i[0], [10, 20, 30])
    s, i = vi.search(v, 3, allowed=[50, 40, 5, 30])
    np.testing.assert_array_equal(i[0], [30, 40, 50])
    hn = VectorIndex(4, "l2", "HNSW32")
    hn.upsert([50, 10, 30, 20, 40], np.repeat(v, 5, axis=0))
    np.testing.assert_array_equal(hn.search(v, 5)[1][0], [10, 20, 30, 40, 50])
    np.testing.assert_array_equal(hn.search(v, 2, allowed=[40, 50, 30])[1][0], [30, 40])


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat", "IVF16,PQ4"])
def test_a_prepared_allowed_set_answers_like_the_array_and_survives_writes(rng, factory):
    """prepare_allowed() does the per-query work once; after any write it is stale, and search
    prepares it again instead of using labels that no longer hold."""
    vi, ids, x = _index(rng, factory, "l2")
    # the FAISS selector path, where preparing costs the most
    vi.tuning = Tuning(exact_search_min_ids=0, exact_search_max_ids=0)
    allowed = ids[rng.random(len(ids)) < 0.5]
    prepared = vi.prepare_allowed(allowed)
    q = rng.standard_normal((20, D)).astype(np.float32)
    for args in ((q, 10, prepared), (q, 10, prepared)):  # the second call reuses the built selector
        np.testing.assert_array_equal(vi.search(*args)[1], vi.search(q, 10, allowed)[1])
    assert prepared.current
    # remove half the allowed ids and re-add the rest under new vectors: labels move (tombstones, IVF lists)
    vi.remove(allowed[: len(allowed) // 2])
    vi.upsert(allowed[len(allowed) // 2 :], rng.standard_normal((len(allowed) - len(allowed) // 2, D)).astype(np.float32))
    assert not prepared.current
    s, i = vi.search(q, 10, prepared)
    np.testing.assert_array_equal(i, vi.search(q, 10, allowed)[1])
    assert np.isin(i[i >= 0], allowed[len(allowed) // 2 :]).all()


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat"])
def test_a_prepared_set_keeps_its_gathered_vectors_until_the_index_changes(rng, factory, monkeypatch):
    """Exact searches over a prepared set gather its vectors once; a write that moves them makes the
    set stale, so the next search sees the new vectors, never the kept copy."""
    import index.allowed as allowed_module

    vi, ids, x = _index(rng, factory, "cosine")
    sel = rng.choice(len(ids), 200, replace=False)
    prepared = vi.prepare_allowed(ids[sel])
    q = rng.standard_normal((5, D)).astype(np.float32)
    expected = reference_knn(ids[sel], x[sel], q, 10, "cosine")
    assert_topk_equal(*vi.search(q, 10, prepared), *expected)
    assert prepared.gathered() is not None
    gathers = []
    monkeypatch.setattr(vi._store, "gather", lambda labels: gathers.append(labels) or None)
    assert_topk_equal(*vi.search(q, 10, prepared), *expected)
    assert not gathers  # the second search gathered nothing
    monkeypatch.undo()

    moved = rng.standard_normal((len(sel), D)).astype(np.float32)
    vi.upsert(ids[sel], moved)  # same ids, new vectors
    assert_topk_equal(*vi.search(q, 10, prepared), *reference_knn(ids[sel], moved, q, 10, "cosine"))

    monkeypatch.setattr(allowed_module, "GATHERED_MAX_BYTES", 100 * D * 4)  # 200 vectors no longer fit
    big = vi.prepare_allowed(ids[sel])
    assert_topk_equal(*vi.search(q, 10, big), *reference_knn(ids[sel], moved, q, 10, "cosine"))
    assert big.gathered() is None


def test_exact_searches_from_many_threads_answer_like_one(rng):
    """Filtered exact searches run in worker threads and take turns at the BLAS product: concurrent
    callers get exactly what sequential ones get."""
    from concurrent.futures import ThreadPoolExecutor

    vi, ids, x = _index(rng, "HNSW32", "cosine")
    prepared = vi.prepare_allowed(ids[::5])
    queries = rng.standard_normal((64, D)).astype(np.float32)
    alone = [vi.search(q, 10, prepared) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: vi.search(q, 10, prepared), queries))
    for (s1, i1), (s2, i2) in zip(alone, together):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
