"""save/load, freeze/write: same results and position, atomic replacement, corrupt files detected,
snapshots independent of the tuning, files of format 1 still readable."""

import os
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import CorruptIndexError, Tuning, VectorIndex
from index import persistence
from _index_helpers import assert_topk_equal, reference_knn

pytestmark = pytest.mark.unit

D = 16
DATA = Path(__file__).parent / "data"


def _populated(rng, factory, metric="cosine", n=1500, tuning=None):
    x = rng.standard_normal((n, D)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    vi = VectorIndex(D, metric, factory, tuning=tuning)
    vi.upsert(ids, x)
    vi.upsert(ids[:20], x[20:40])  # replacements (tombstones for HNSW)
    vi.remove(ids[40:60])
    return vi, ids, x


def _same_state(a: VectorIndex, b: VectorIndex) -> None:
    assert (a.dimension, a.metric, a.factory) == (b.dimension, b.metric, b.factory)
    assert a.stats() == b.stats()
    np.testing.assert_array_equal(a.ids(), b.ids())
    np.testing.assert_array_equal(a.get_vectors(a.ids()), b.get_vectors(b.ids()))


@pytest.mark.parametrize(
    "factory,n",
    [("Flat", 1500), ("HNSW32", 1500), ("IVF16,Flat", 1500), ("IVF16,Flat", 400), ("IVF16,PQ8x4", 1500),
     ("HNSW16,SQ8", 500), ("IVF16,PQ8x4,RFlat", 1500), ("IVF16,PQ8x4,RFlat", 400)],
)
def test_roundtrip_same_results_and_position(tmp_path, rng, factory, n):
    tuning = Tuning(ef_search=77, nprobe=5)
    vi, ids, x = _populated(rng, factory, n=n, tuning=tuning)
    q = rng.standard_normal((20, D)).astype(np.float32)
    allowed = ids[::7]
    before = vi.search(q, 10), vi.search(q, 10, allowed=allowed)
    path = tmp_path / "c1.vidx"
    vi.save(path, position=123456789012)
    loaded, position = VectorIndex.load(path, tuning=tuning)
    assert position == 123456789012
    _same_state(loaded, vi)
    after = loaded.search(q, 10), loaded.search(q, 10, allowed=allowed)
    for (s0, i0), (s1, i1) in zip(before, after):
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_allclose(s0, s1, rtol=1e-6)
    # the loaded index stays writable, consistently with the original (and trains alike)
    more = rng.standard_normal((700, D))
    for index in (vi, loaded):
        index.upsert(ids[60:70], x[:10])
        assert index.remove(ids[70:80]) == 10
        index.upsert(10**12 + np.arange(700), more)
    _same_state(loaded, vi)
    s0, i0 = vi.search(q, 10)
    s1, i1 = loaded.search(q, 10)
    np.testing.assert_array_equal(i0, i1)


def test_snapshot_files_hold_structure_only(tmp_path, rng):
    vi, _, _ = _populated(rng, "HNSW32", n=300, tuning=Tuning(ef_search=77))
    vi.save(tmp_path / "c.vidx", 3)
    version, meta, arrays, indexes = persistence.read_file(tmp_path / "c.vidx")
    assert version == persistence.FORMAT_VERSION == 2
    structure = {"kind", "dimension", "metric", "factory", "position", "tombstones", "faiss_version", "saved_at"}
    assert set(meta) == structure
    assert set(arrays) == {"int2ext"} and set(indexes) == {"main"}
    VectorIndex(D, "cosine", "IVF16,Flat").save(tmp_path / "c.vidx", 4)  # untrained: the buffer only
    assert set(persistence.read_file(tmp_path / "c.vidx")[3]) == {"side"}


def test_a_loaded_index_runs_with_the_tuning_it_is_given(tmp_path, rng):
    """Knobs come from the loader, never from the file: loading with other values puts them in force."""
    vi, ids, x = _populated(rng, "HNSW32", n=2000, tuning=Tuning(ef_search=16, compact_threshold=0.9))
    vi.save(tmp_path / "c.vidx", 1)
    new = Tuning(ef_search=300, ef_construction=64, compact_threshold=0.05, exact_search_min_ids=0)
    loaded, _ = VectorIndex.load(tmp_path / "c.vidx", tuning=new)
    assert loaded.tuning == new
    assert (loaded.stats()["ef_search"], loaded.stats()["ef_construction"]) == (300, 64)
    q = rng.standard_normal((20, D)).astype(np.float32)
    np.testing.assert_array_equal(loaded.search(q, 10)[1], vi.search(q, 10, ef_search=300)[1])
    assert loaded.stats()["tombstones"] == 40
    loaded.remove(ids[100:200])  # 140 / 2020 > 0.05: compacted with the new threshold
    assert loaded.stats()["tombstones"] == 0 and len(loaded) == 1880
    assert VectorIndex.load(tmp_path / "c.vidx")[0].tuning == Tuning()  # default knobs
    with pytest.raises(ValueError, match="index.Tuning"):  # a bad tuning is no corrupt file
        VectorIndex.load(tmp_path / "c.vidx", tuning={"ef_search": 300})


def _rewrite(path, version, meta, arrays, indexes, monkeypatch):
    """Write the parts of an index file back, in file format ``version``."""
    with monkeypatch.context() as patch:
        patch.setattr(persistence, "FORMAT_VERSION", version)
        persistence.write_file(path, meta, arrays, indexes)


def test_knobs_that_files_lack_or_do_not_know_are_ignored(tmp_path, rng, monkeypatch):
    """A knob added after a file was written (or one since removed) never makes the file unreadable."""
    vi, ids, _ = _populated(rng, "IVF16,Flat", n=1000)
    path = tmp_path / "c.vidx"
    vi.save(path, 8)
    version, meta, arrays, indexes = persistence.read_file(path)
    _rewrite(path, version, {**meta, "some_future_knob": 3, "nprobe": 2}, arrays, indexes, monkeypatch)
    loaded, position = VectorIndex.load(path, tuning=Tuning(nprobe=16))
    assert position == 8 and loaded.stats()["nprobe"] == 16
    np.testing.assert_array_equal(loaded.ids(), vi.ids())

    version, meta, arrays, indexes = persistence.read_file(DATA / "format1_ivf.vidx")
    assert version == 1 and meta["nprobe"] == 8 and "compact_threshold" in meta
    del meta["compact_threshold"], meta["nprobe"]
    _rewrite(path, 1, {**meta, "some_future_knob": 3}, arrays, indexes, monkeypatch)
    loaded, position = VectorIndex.load(path, tuning=Tuning(nprobe=16))
    assert position == 1700 and loaded.stats()["nprobe"] == 16 and len(loaded) == 690


# Written by index/ as of commit 650125d (format 1, knobs in the metadata; HNSW with ef_search = 77), from
# the data and writes of _format1_contents: file -> (metric, factory, n).
FORMAT1 = {
    "format1_flat.vidx": ("l2", "Flat", 300),
    "format1_hnsw.vidx": ("cosine", "HNSW32", 300),
    "format1_ivf.vidx": ("l2", "IVF16,Flat", 700),
    "format1_ivf_untrained.vidx": ("dot", "IVF16,Flat", 300),
    "format1_refine_untrained.vidx": ("l2", "IVF16,PQ4x4,RFlat", 300),
}


def _format1_contents(metric, factory, n):
    """The same index built again (same data, same writes; written at position 1000 + n) and its live ids."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    vi = VectorIndex(8, metric, factory)
    vi.upsert(ids, x)
    vi.upsert(ids[:10], x[10:20])
    vi.remove(ids[20:30])
    return vi, np.r_[ids[:20], ids[30:]]


@pytest.mark.parametrize("name", sorted(FORMAT1))
def test_files_of_format_1_load(tmp_path, rng, name):
    metric, factory, n = FORMAT1[name]
    assert persistence.read_file(DATA / name)[0] == 1
    loaded, position = VectorIndex.load(DATA / name)
    again, live_ids = _format1_contents(metric, factory, n)
    assert position == 1000 + n
    _same_state(loaded, again)  # the knobs in the file (ef_search 77) are not used
    q = rng.standard_normal((10, 8)).astype(np.float32)
    ref = reference_knn(live_ids, loaded.get_vectors(live_ids), q, 10, metric)
    assert_topk_equal(*loaded.search(q, 10, exact=True), *ref, atol=1e-3)
    assert_topk_equal(*loaded.search(q, 10, live_ids[::3]), *reference_knn(
        live_ids[::3], loaded.get_vectors(live_ids[::3]), q, 10, metric), atol=1e-3)
    # still writable, like the same index built today: untrained ones train when they reach 624
    more = 10**6 + np.arange(400)
    for index in (loaded, again):
        index.upsert(more, np.random.default_rng(5).standard_normal((400, 8)))
        index.remove(live_ids[:5])
    _same_state(loaded, again)
    assert loaded.stats()["is_trained"]
    loaded.save(tmp_path / "again.vidx", 5)  # and written in today's format
    assert persistence.read_file(tmp_path / "again.vidx")[0] == 2
    _same_state(VectorIndex.load(tmp_path / "again.vidx")[0], loaded)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat", "IVF16,PQ8x4,RFlat"])
def test_a_snapshot_holds_the_state_at_freeze_time(tmp_path, rng, factory):
    """freeze() copies everything; writes that follow (replacements, removals, compaction, training)
    do not reach the file written afterwards."""
    vi, ids, x = _populated(rng, factory, metric="l2", n=500)
    q = rng.standard_normal((10, D)).astype(np.float32)
    frozen_ids, frozen_results = vi.ids(), vi.search(q, 10)
    frozen_vectors = vi.get_vectors(frozen_ids)
    snapshot = vi.freeze(77)
    assert snapshot.position == 77
    vi.upsert(ids[:300], x[:300] + 1)  # HNSW: compacts; untrained types: train (500 - 20 + 300 > 624)
    vi.remove(ids[300:400])
    vi.upsert(10**9 + np.arange(300), rng.standard_normal((300, D)))
    snapshot.write(tmp_path / "c.vidx")
    loaded, position = VectorIndex.load(tmp_path / "c.vidx")
    assert position == 77
    np.testing.assert_array_equal(loaded.ids(), frozen_ids)
    np.testing.assert_array_equal(loaded.get_vectors(frozen_ids), frozen_vectors)
    for got, expected in zip(loaded.search(q, 10), frozen_results):
        np.testing.assert_array_equal(got, expected)


def test_freeze_runs_alongside_searches(rng):
    """freeze() only reads: searches from other threads at the same time answer as before."""
    vi, ids, x = _populated(rng, "HNSW32", n=3000)
    q = rng.standard_normal((16, D)).astype(np.float32)
    expected = vi.search(q, 10)[1]
    results, stop = [], threading.Event()

    def search():
        while not stop.is_set():
            results.append(vi.search(q, 10)[1])

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    snapshots = [vi.freeze(i) for i in range(5)]
    stop.set()
    for t in threads:
        t.join()
    assert results and all(np.array_equal(r, expected) for r in results)
    copies = [faiss.serialize_index(s.indexes["main"]) for s in snapshots]
    assert all(np.array_equal(c, faiss.serialize_index(vi._main.index)) for c in copies)


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

    monkeypatch.setattr(persistence._HashingWriter, "write", boom)
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
    snapshot = vi.freeze(1)
    persistence.write_file(path, snapshot.meta, {"ids": ids[:10]}, snapshot.indexes)  # 10 ids, 80 vectors
    with pytest.raises(CorruptIndexError, match="id mapping"):
        VectorIndex.load(path)
    persistence.write_file(path, {**snapshot.meta, "tombstones": 3}, snapshot.arrays, snapshot.indexes)
    with pytest.raises(CorruptIndexError, match="id mapping"):
        VectorIndex.load(path)
    persistence.write_file(path, {**snapshot.meta, "dimension": 8}, snapshot.arrays, snapshot.indexes)
    with pytest.raises(CorruptIndexError, match="dimension"):
        VectorIndex.load(path)
    persistence.write_file(path, snapshot.meta, {"int2ext": ids}, snapshot.indexes)  # another way of keeping ids
    with pytest.raises(CorruptIndexError):
        VectorIndex.load(path)


def test_save_validates_arguments(tmp_path, rng):
    vi, _, _ = _populated(rng, "Flat", n=50)
    with pytest.raises(ValueError):
        vi.save(tmp_path / "a", position="7")
    with pytest.raises(ValueError):
        vi.freeze(position=1.5)
    with pytest.raises(ValueError, match="path"):
        vi.freeze(1).write(None)
    with pytest.raises(FileNotFoundError):
        vi.save(tmp_path / "no" / "such" / "dir" / "a", position=1)


@pytest.mark.parametrize(
    "factory",
    ["Flat", "SQ8", "PQ8x4", "RR16,Flat", "L2norm,Flat", "HNSW32", "HNSW16,SQ8", "HNSW16,Refine(Flat)",
     "IVF16,Flat", "IVF16,SQ8", "IVF16,PQ8x4", "IVF16,RQ2x4", "PCA8,IVF16,Flat", "IVF16,PQ8x4,RFlat"],
)
def test_a_snapshot_copies_every_index_type_faithfully(rng, factory):
    """The copy freeze() takes (faiss.clone_index, or serialization for types the cloner does not
    know, such as L2norm) serializes exactly like the live index."""
    vi, _, _ = _populated(rng, factory, metric="l2", n=1000)
    assert vi.stats()["is_trained"]
    snapshot = vi.freeze(1)
    copy, live = snapshot.indexes["main"], vi._main.index
    np.testing.assert_array_equal(faiss.serialize_index(copy), faiss.serialize_index(live))
