"""VectorIndex semantics on the exact Flat index: metrics, upserts, removals, padding, validation."""

import numpy as np
import pytest

from index import METRICS, Tuning, VectorIndex
from _index_helpers import assert_topk_equal, reference_knn

pytestmark = pytest.mark.unit

D = 24


@pytest.mark.parametrize("metric", METRICS)
def test_flat_matches_numpy_for_every_metric(rng, metric):
    x = rng.standard_normal((1500, D)).astype(np.float32) * 3
    ids = rng.permutation(100_000)[:1500].astype(np.int64)
    q = rng.standard_normal((25, D)).astype(np.float32)
    vi = VectorIndex(D, metric, "Flat")
    vi.upsert(ids, x)
    scores, got = vi.search(q, 10)
    assert scores.shape == (25, 10) and scores.dtype == np.float32
    assert got.shape == (25, 10) and got.dtype == np.int64
    assert_topk_equal(scores, got, *reference_knn(ids, x, q, 10, metric))


def test_score_conventions(rng):
    x = rng.standard_normal((50, D)).astype(np.float32)
    ids = np.arange(50)
    for metric in METRICS:
        vi = VectorIndex(D, metric)
        vi.upsert(ids, x)
        s, i = vi.search(x[7], 3)  # a single 1-D query
        assert s.shape == (1, 3) and i[0, 0] == 7
        if metric == "cosine":
            assert s[0, 0] == pytest.approx(1.0, abs=1e-5)
            assert s[0, 0] >= s[0, 1] >= s[0, 2]
        elif metric == "dot":
            assert s[0, 0] == pytest.approx(float(x[7] @ x[7]), rel=1e-5)
        else:
            assert s[0, 0] == pytest.approx(0.0, abs=1e-3)
            # Euclidean distance, not squared
            assert s[0, 1] == pytest.approx(float(np.linalg.norm(x[7] - x[i[0, 1]])), rel=1e-4)
            assert s[0, 1] <= s[0, 2]


@pytest.mark.parametrize("metric,pad", [("cosine", -np.inf), ("dot", -np.inf), ("l2", np.inf)])
def test_fewer_than_k_results_are_padded(rng, metric, pad):
    vi = VectorIndex(D, metric)
    s, i = vi.search(rng.standard_normal((2, D)), 4)
    assert (i == -1).all() and (s == pad).all()
    vi.upsert([5, 9], rng.standard_normal((2, D)))
    s, i = vi.search(rng.standard_normal((3, D)), 4)
    assert (np.sort(i[:, :2], axis=1) == [5, 9]).all()
    assert (i[:, 2:] == -1).all() and (s[:, 2:] == pad).all()
    assert np.isfinite(s[:, :2]).all()


def test_upsert_replaces_without_duplicates(rng):
    x = rng.standard_normal((200, D)).astype(np.float32)
    ids = np.arange(1000, 1200)
    vi = VectorIndex(D, "l2")
    vi.upsert(ids, x)
    new = rng.standard_normal((1, D)).astype(np.float32) * 10
    vi.upsert([1003], new)
    assert len(vi) == 200
    s, i = vi.search(new, 5)
    assert i[0, 0] == 1003 and s[0, 0] == pytest.approx(0.0, abs=1e-3)
    s, i = vi.search(x[3], 200)
    assert np.unique(i).size == 200  # 1003 appears once, with its new vector
    assert s[0, i[0] == 1003][0] == pytest.approx(float(np.linalg.norm(x[3] - new[0])), rel=1e-4)
    np.testing.assert_allclose(vi.get_vectors([1003]), new, rtol=1e-6)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_duplicate_ids_in_one_call_last_wins(rng, factory):
    x = rng.standard_normal((4, D)).astype(np.float32)
    vi = VectorIndex(D, "l2", factory)
    vi.upsert([7, 8, 7, 7], x)
    assert len(vi) == 2 and vi.stats()["stored"] + vi.stats()["pending_untrained"] == 2
    np.testing.assert_allclose(vi.get_vectors([7, 8]), x[[3, 1]])
    s, i = vi.search(x[0], 4)
    np.testing.assert_array_equal(np.sort(i[0, :2]), [7, 8])
    assert (i[0, 2:] == -1).all()


def test_remove_ids(rng):
    x = rng.standard_normal((100, D)).astype(np.float32)
    ids = np.arange(0, 300, 3)
    vi = VectorIndex(D, "cosine")
    vi.upsert(ids, x)
    assert vi.remove(np.array([3, 4, 6, 6, 10**12, -1])) == 2
    assert 3 not in vi.ids() and len(vi) == 98
    assert vi.remove([3]) == 0
    np.testing.assert_array_equal(vi.ids(), np.setdiff1d(ids, [3, 6]))
    _, got = vi.search(x, 100)
    assert not np.isin(got, [3, 6]).any()
    assert (got[:, 98:] == -1).all()


def test_ids_sorted_after_random_upserts(rng):
    ids = rng.permutation(10_000)[:500]
    vi = VectorIndex(8, "dot")
    vi.upsert(ids, rng.standard_normal((500, 8)))
    np.testing.assert_array_equal(vi.ids(), np.sort(ids))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda vi: vi.upsert([1], np.ones((1, D + 1))), "dimension"),
        (lambda vi: vi.upsert([1, 2], np.ones((3, D))), "2 ids but 3"),
        (lambda vi: vi.upsert([1], np.full((1, D), np.nan)), "NaN or infinite"),
        (lambda vi: vi.upsert([1], np.full((1, D), np.inf)), "NaN or infinite"),
        (lambda vi: vi.upsert([1.5], np.ones((1, D))), "integer dtype"),
        (lambda vi: vi.upsert([-3], np.ones((1, D))), "non-negative"),
        (lambda vi: vi.upsert([[1]], np.ones((1, D))), "1-D"),
        (lambda vi: vi.upsert([1], np.ones((1, 2, D))), "2-D"),
        (lambda vi: vi.upsert([1], np.zeros((1, D))), "zero norm"),
        (lambda vi: vi.upsert([1], np.array([["a"] * D])), "numeric"),
        (lambda vi: vi.search(np.ones((2, D - 1)), 3), "dimension"),
        (lambda vi: vi.search(np.ones(D - 1), 3), "dimension"),
        (lambda vi: vi.search(np.full((1, D), np.nan), 3), "NaN"),
        (lambda vi: vi.search(np.ones((1, D)), 0), "k must be"),
        (lambda vi: vi.search(np.ones((1, D)), 2.5), "k must be"),
        (lambda vi: vi.search(np.ones((1, D)), 2, allowed=np.ones((2, 2), int)), "allowed"),
        (lambda vi: vi.search(np.ones((1, D)), 2, allowed=[0.5]), "allowed"),
        (lambda vi: vi.prepare_allowed([-1.5]), "allowed"),
    ],
)
def test_invalid_inputs_raise_value_error(call, match):
    vi = VectorIndex(D, "cosine")
    vi.upsert([1, 2], np.ones((2, D)))
    with pytest.raises(ValueError, match=match):
        call(vi)
    assert len(vi) == 2  # failed calls change nothing


@pytest.mark.parametrize(
    "args,match",
    [
        ((100, "l2", "PQ16"), "PQ M must be between 1 and 100 and divide its input dimension 100, got 16"),
        ((32, "l2", "NotAnIndex"), "'NotAnIndex' is not a FAISS factory string accepted for dimension 32"),
        ((32, "l2", "IVF16,PQ5"), "factory"),
        ((32, "l2", ""), "non-empty"),
        ((32, "l2", "IDMap,Flat"), "IDMap"),
        ((32, "l2", "NSG32"), "deletes cannot be implemented"),
        ((32, "l2", "IVF16,PQ16x4fs"), "fast-scan"),
        ((32, "hamming", "Flat"), "metric"),
        ((0, "l2", "Flat"), "dimension"),
        ((32, "l2", "HNSW32", {"tuning": {"ef_search": 1}}), "index.Tuning"),
    ],
)
def test_invalid_construction_raises_value_error(args, match):
    kwargs = args[3] if len(args) > 3 else {}
    with pytest.raises(ValueError, match=match):
        VectorIndex(*args[:3], **kwargs)


@pytest.mark.parametrize(
    "knobs,match",
    [
        ({"ef_search": 0}, "ef_search"),
        ({"ef_construction": 2.5}, "ef_construction"),
        ({"nprobe": -1}, "nprobe"),
        ({"min_train_size": True}, "min_train_size"),
        ({"compact_threshold": float("nan")}, "compact_threshold"),
        ({"exact_search_min_ids": -1}, "exact_search_min_ids"),
        ({"exact_search_fraction": "0.2"}, "exact_search_fraction"),
    ],
)
def test_invalid_tuning_raises_value_error(knobs, match):
    with pytest.raises(ValueError, match=match):
        Tuning(**knobs)


def test_one_tuning_serves_every_index_type():
    """The service builds one Tuning from its settings for all its collections: a knob that does not
    apply to an index type is ignored by it, the rest are in force."""
    tuning = Tuning(ef_search=40, ef_construction=60, nprobe=4)
    hnsw = VectorIndex(32, "l2", "HNSW32", tuning=tuning).stats()
    ivf = VectorIndex(32, "l2", "IVF16,Flat", tuning=tuning).stats()
    flat = VectorIndex(32, "l2", "Flat", tuning=tuning).stats()
    assert (hnsw["ef_search"], hnsw["ef_construction"], hnsw["nprobe"]) == (40, 60, None)
    assert (ivf["ef_search"], ivf["ef_construction"], ivf["nprobe"]) == (None, None, 4)
    assert (flat["ef_search"], flat["ef_construction"], flat["nprobe"]) == (None, None, None)
    assert VectorIndex(32, "l2", "IVF16,Flat", tuning=Tuning(nprobe=1000)).stats()["nprobe"] == 16  # <= nlist


def test_use_gpu_true_without_gpu_is_an_error():
    with pytest.raises(ValueError, match="GPU"):
        VectorIndex(8, "l2", "Flat", use_gpu=True)
    with pytest.raises(ValueError, match="GPU"):
        VectorIndex(8, "l2", "HNSW32", use_gpu=True)
    assert not VectorIndex(8, "l2", "Flat").stats()["gpu"]  # auto: no GPU here


def test_get_vectors_unknown_id_raises():
    vi = VectorIndex(4, "l2")
    vi.upsert([1], np.ones((1, 4)))
    with pytest.raises(KeyError):
        vi.get_vectors([1, 2])


def test_empty_inputs_are_noops(rng):
    vi = VectorIndex(D, "l2")
    vi.upsert(np.empty(0, np.int64), np.empty((0, D), np.float32))
    assert len(vi) == 0 and vi.remove([]) == 0
    s, i = vi.search(np.empty((0, D), np.float32), 5)
    assert s.shape == (0, 5) and i.shape == (0, 5)


def test_concurrent_searches_agree(rng):
    """Searches may run concurrently (the caller only serialises writes)."""
    from concurrent.futures import ThreadPoolExecutor

    x = rng.standard_normal((2000, D)).astype(np.float32)
    vi = VectorIndex(D, "cosine", "HNSW32")
    vi.upsert(np.arange(2000), x)
    vi.remove(np.arange(0, 2000, 9))  # tombstones: bitmap selector shared by all searches
    q = rng.standard_normal((8, D)).astype(np.float32)
    allowed = np.arange(1, 2000, 3)
    expected = [vi.search(q, 10), vi.search(q, 10, allowed=allowed)]

    def work(i):
        return vi.search(q, 10) if i % 2 == 0 else vi.search(q, 10, allowed=allowed)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(40)))
    for i, (s, ids) in enumerate(results):
        np.testing.assert_array_equal(ids, expected[i % 2][1])
