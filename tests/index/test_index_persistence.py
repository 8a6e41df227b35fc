"""save/load: same results and position, atomic replacement, corrupt files detected."""

import os

import faiss
import numpy as np
import pytest

from index import CorruptIndexError, VectorIndex
from index import persistence

pytestmark = pytest.mark.unit

D = 16


def _populated(rng, factory, metric="cosine", n=1500):
    x = rng.standard_normal((n, D)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    vi = VectorIndex(D, metric, factory)
    vi.upsert(ids, x)
    vi.upsert(ids[:20], x[20:40])  # replacements (tombstones for HNSW)
    vi.remove(ids[40:60])
    return vi, ids, x


@pytest.mark.parametrize(
    "factory,n",
    [("Flat", 1500), ("HNSW32", 1500), ("IVF16,Flat", 1500), ("IVF16,Flat", 400), ("IVF16,PQ8x4", 1500),
     ("HNSW16,SQ8", 500), ("IVF16,PQ8x4,RFlat", 1500)],
)
def test_roundtrip_same_results_and_position(tmp_path, rng, factory, n):
    vi, ids, x = _populated(rng, factory, n=n)
    if factory.startswith("HNSW"):
        vi.ef_search = 77
    q = rng.standard_normal((20, D)).astype(np.float32)
    allowed = ids[::7]
    before = vi.search(q, 10), vi.search(q, 10, allowed_ids=allowed)
    path = tmp_path / "c1.vidx"
    vi.save(path, position=123456789012)
    loaded, position = VectorIndex.load(path)
    assert position == 123456789012
    assert (loaded.dimension, loaded.metric, loaded.factory) == (D, "cosine", factory)
    assert len(loaded) == len(vi) and loaded.is_trained == vi.is_trained
    assert loaded.deleted_fraction == vi.deleted_fraction
    assert (loaded.ef_search, loaded.ef_construction, loaded.nprobe) == (vi.ef_search, vi.ef_construction, vi.nprobe)
    assert loaded.min_train_size == vi.min_train_size
    np.testing.assert_array_equal(loaded.ids(), vi.ids())
    after = loaded.search(q, 10), loaded.search(q, 10, allowed_ids=allowed)
    for (s0, i0), (s1, i1) in zip(before, after):
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_allclose(s0, s1, rtol=1e-6)
    # the loaded index stays writable, consistently with the original
    for index in (vi, loaded):
        index.upsert(ids[60:70], x[:10])
        assert index.remove(ids[70:80]) == 10
        index.upsert([10**12], x[:1])
    np.testing.assert_array_equal(loaded.ids(), vi.ids())
    s0, i0 = vi.search(q, 10)
    s1, i1 = loaded.search(q, 10)
    np.testing.assert_array_equal(i0, i1)
    assert loaded.is_trained == vi.is_trained


def test_save_replaces_atomically_and_ignores_stray_temp_files(tmp_path, rng):
    vi, ids, x = _populated(rng, "Flat")
    path = tmp_path / "c.vidx"
    vi.save(path, 1)
    # a crashed earlier save leaves a temp file behind: harmless
    (tmp_path / ".c.vidx.deadbeef.tmp").write_bytes(b"garbage from a crash")
    vi.remove(ids[:100])
    vi.save(str(path), 2)
    loaded, pos = VectorIndex.load(str(path))
    assert pos == 2 and len(loaded) == len(vi)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [".c.vidx.deadbeef.tmp", "c.vidx"]


def test_failed_save_keeps_old_file_and_cleans_temp(tmp_path, rng, monkeypatch):
    vi, ids, x = _populated(rng, "HNSW32", n=300)
    path = tmp_path / "c.vidx"
    vi.save(path, 5)
    old = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persistence.faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        vi.save(path, 6)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["c.vidx"]
    assert VectorIndex.load(path)[1] == 5


@pytest.fixture
def saved(tmp_path, rng):
    vi, _, _ = _populated(rng, "HNSW32", n=300)
    path = tmp_path / "c.vidx"
    vi.save(path, 9)
    return path


@pytest.mark.parametrize("where", [0.01, 0.2, 0.5, 0.9, 0.999])
def test_corrupted_byte_is_detected(saved, where):
    data = bytearray(saved.read_bytes())
    pos = int(len(data) * where)
    data[pos] ^= 0x40
    saved.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError):
        VectorIndex.load(saved)


@pytest.mark.parametrize("keep", [0, 5, 100, 0.5, -1])
def test_truncated_file_is_detected(saved, keep):
    data = saved.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    saved.write_bytes(data[:n])
    with pytest.raises(CorruptIndexError, match="short|truncated|end marker|magic"):
        VectorIndex.load(saved)


def test_other_files_are_rejected(tmp_path):
    path = tmp_path / "x.vidx"
    path.write_bytes(os.urandom(5000))
    with pytest.raises(CorruptIndexError):
        VectorIndex.load(path)
    faiss.write_index(faiss.IndexFlatL2(4), str(path))  # a bare FAISS file is not ours
    with pytest.raises(CorruptIndexError):
        VectorIndex.load(path)
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "missing.vidx")
    assert issubclass(CorruptIndexError, ValueError)


def test_inconsistent_contents_are_rejected(tmp_path, rng):
    """A well-formed file whose id mapping does not match the FAISS index is refused."""
    vi, ids, x = _populated(rng, "Flat", n=100)
    path = tmp_path / "c.vidx"
    persistence.write_file(
        path,
        {**_meta(vi), "position": 1},
        {"ids": ids[:10]},  # 10 ids for an index holding 80 vectors
        {"main": vi._main},
    )
    with pytest.raises(CorruptIndexError, match="id mapping"):
        VectorIndex.load(path)


def _meta(vi):
    return {
        "kind": "VectorIndex", "dimension": vi.dimension, "metric": vi.metric, "factory": vi.factory,
        "mode": "idmap", "tombstones": 0, "ef_search": None, "ef_construction": None, "nprobe": None,
        "min_train_size": 0, "compact_threshold": 0.2, "exact_search_min_ids": 1,
        "exact_search_fraction": 0.2, "exact_search_max_ids": 10,
    }


def test_save_validates_arguments(tmp_path, rng):
    vi, _, _ = _populated(rng, "Flat", n=50)
    with pytest.raises(ValueError):
        vi.save(tmp_path / "a", position="7")
    with pytest.raises(FileNotFoundError):
        vi.save(tmp_path / "no" / "such" / "dir" / "a", position=1)
