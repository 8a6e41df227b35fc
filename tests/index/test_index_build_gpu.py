"""build() helpers and the automatic GPU selection (exercised with a CPU stand-in for the GPU clone)."""

import faiss
import numpy as np
import pytest

import index.gpu as gpu_mod
from index import Tuning, VectorIndex, build, build_from_chunks
from _index_helpers import assert_topk_equal, reference_knn

pytestmark = pytest.mark.unit

D = 16


def test_build_flat_with_progress(rng, capsys):
    x = rng.standard_normal((1000, D)).astype(np.float32)
    ids = np.arange(1000, dtype=np.int64) + 5
    vi = build(D, "cosine", "Flat", ids, x, progress=True, chunk_size=128)
    assert len(vi) == 1000
    assert "1000/1000" in capsys.readouterr().err  # tqdm progress bar on stderr
    q = rng.standard_normal((5, D)).astype(np.float32)
    assert_topk_equal(*vi.search(q, 10), *reference_knn(ids, x, q, 10, "cosine"))


def test_build_trains_up_front_on_a_sample(rng, caplog):
    x = rng.standard_normal((3000, D)).astype(np.float32)
    ids = rng.permutation(10**6)[:3000].astype(np.int64)
    vi = build(D, "l2", "IVF32,Flat", ids, x, progress=False, chunk_size=500, train_sample_size=1500)
    assert vi.stats()["is_trained"] and len(vi) == 3000 and vi.stats()["stored"] == 3000
    q = rng.standard_normal((5, D)).astype(np.float32)
    assert_topk_equal(*vi.search(q, 10, nprobe=32), *reference_knn(ids, x, q, 10, "l2"))


def test_build_small_untrained_and_from_chunks(rng):
    x = rng.standard_normal((300, D)).astype(np.float32)
    ids = np.arange(300, dtype=np.int64)
    vi = build(D, "dot", "IVF32,Flat", ids, x, progress=False)
    assert not vi.stats()["is_trained"] and len(vi) == 300
    chunks = [(ids[a : a + 100], x[a : a + 100]) for a in range(0, 300, 100)]
    chunks.append((ids[:10], x[10:20]))  # a later chunk repeats ids: it replaces them
    vi2 = build_from_chunks(D, "dot", "HNSW32", iter(chunks), total=310, progress=False, tuning=Tuning(ef_search=64))
    assert len(vi2) == 300 and vi2.stats()["ef_search"] == 64
    np.testing.assert_allclose(vi2.get_vectors(ids[:10]), x[10:20])
    with pytest.raises(ValueError, match="ids but"):
        build(D, "l2", "Flat", ids, x[:10], progress=False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend one GPU exists; the 'GPU clone' is a CPU clone, so the selection logic, lazy
    cloning and invalidation after writes are exercised without hardware."""
    clones = []

    def to_gpu(index, device=0):
        clone = faiss.clone_index(index)
        clones.append(clone)
        return clone

    monkeypatch.setattr(gpu_mod, "gpu_count", lambda: 1)
    monkeypatch.setattr(gpu_mod, "to_gpu", to_gpu)
    return clones


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_gpu_clone_is_used_and_kept_in_sync(rng, fake_gpu, factory):
    x = rng.standard_normal((1000, D)).astype(np.float32)
    ids = np.arange(1000, dtype=np.int64) * 2
    vi = VectorIndex(D, "l2", factory)
    assert vi.stats()["gpu"]
    vi.upsert(ids, x)
    q = rng.standard_normal((5, D)).astype(np.float32)
    kw = {"nprobe": 16} if vi.stats()["nprobe"] else {}
    assert_topk_equal(*vi.search(q, 10, **kw), *reference_knn(ids, x, q, 10, "l2"))
    assert len(fake_gpu) == 1
    vi.search(q, 3)
    assert len(fake_gpu) == 1  # clone reused while nothing changes
    vi.upsert([10**9], q[:1])  # pure addition: mirrored into the clone
    assert vi.search(q[:1], 1)[1][0, 0] == 10**9
    vi.remove([10**9])  # removal: clone rebuilt lazily on the next search
    assert vi.search(q[:1], 1)[1][0, 0] != 10**9
    assert len(fake_gpu) == 2
    # filtered searches run on the CPU index (GPU indexes ignore IDSelectors)
    s, i = vi.search(q, 5, allowed=ids[:50])
    assert np.isin(i, ids[:50]).all()
    assert len(fake_gpu) == 2


def test_gpu_not_used_for_hnsw_or_when_disabled(rng, fake_gpu):
    assert not VectorIndex(D, "l2", "HNSW32").stats()["gpu"]
    assert not VectorIndex(D, "l2", "Flat", use_gpu=False).stats()["gpu"]
    assert VectorIndex(D, "l2", "IVF16,Flat", use_gpu=True).stats()["gpu"]


def test_gpu_failure_falls_back_to_cpu(rng, monkeypatch):
    monkeypatch.setattr(gpu_mod, "gpu_count", lambda: 1)

    def broken(index, device=0):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gpu_mod, "to_gpu", broken)
    vi = VectorIndex(D, "cosine", "Flat")
    x = rng.standard_normal((50, D)).astype(np.float32)
    vi.upsert(np.arange(50), x)
    s, i = vi.search(x[:3], 1)
    np.testing.assert_array_equal(i[:, 0], [0, 1, 2])
    assert not vi.stats()["gpu"]
