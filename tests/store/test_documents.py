"""The SQL repository on SQLite and PostgreSQL: positions, the removal log, replay data, pages."""

from __future__ import annotations

import numpy as np
import pytest

from service.store.documents import (
    CollectionDeleted,
    DocumentStore,
    DuplicateCollection,
    NewDocument,
    TooManyCollections,
)
from service.store.filters import parse_filter

pytestmark = pytest.mark.unit


def doc(doc_id: str, value: float, **meta) -> NewDocument:
    return NewDocument(id=doc_id, text=f"text {doc_id}", metadata=meta, vector=np.full(3, value, dtype=np.float32))


def test_positions_removal_log_and_replay(engine):
    store = DocumentStore(engine)
    c = store.create_collection("t", "c", None, 3, "cosine", "Flat")
    with pytest.raises(DuplicateCollection):
        store.create_collection("t", "c", None, 3, "cosine", "Flat")
    seqs, replaced = store.upsert(c.id, [doc("a", 1), doc("b", 2)])
    assert seqs.tolist() == [1, 2] and replaced.size == 0
    seqs, replaced = store.upsert(c.id, [doc("b", 3), doc("c", 4)])
    # b's old seq 2 is logged as removed at position 3; the new rows take positions 4 and 5
    assert replaced.tolist() == [2] and seqs.tolist() == [4, 5]
    removed, position = store.delete(c.id, ids=["a"])
    assert removed.tolist() == [1] and position == 6
    assert store.delete(c.id, ids=["nope"])[1] is None

    changes = store.changes_since(c.id, 2, 3)
    removed, added, vectors = changes.removed, changes.seqs, changes.vectors
    assert sorted(removed.tolist()) == [1, 2] and added.tolist() == [4, 5]
    np.testing.assert_array_equal(vectors[:, 0], [3, 4])
    store.prune_removals(c.id, 3)
    assert store.changes_since(c.id, 0, 3).removed.tolist() == [1]  # only the removal after 3 is left

    assert store.count(c.id) == 2
    got = store.get(c.id, "b")
    assert got.seq == 4 and got.text == "text b" and np.frombuffer(got.vector, "<f4").tolist() == [3, 3, 3]
    assert sorted(store.by_seqs(c.id, [4, 5, 99])) == [4, 5]
    chunks = list(store.iter_vectors(c.id, 3, chunk=1))
    assert [s.tolist() for s, _ in chunks] == [[4], [5]]


def test_pages_filters_and_collections_are_separate(engine):
    store = DocumentStore(engine)
    one = store.create_collection("t", "one", None, 3, "cosine", "Flat")
    two = store.create_collection("u", "one", "m", 3, "l2", "HNSW32")  # same name, other tenant
    store.upsert(one.id, [doc(f"{i:02d}", i, even=i % 2 == 0) for i in range(7)])
    store.upsert(two.id, [doc("x", 1)])
    first = store.page(one.id, None, None, 3)
    assert [d.id for d in first] == ["00", "01", "02"]
    assert [d.id for d in store.page(one.id, None, "02", 10)] == ["03", "04", "05", "06"]
    even = parse_filter({"even": True})
    assert sorted(store.seqs_matching(one.id, even).tolist()) == [1, 3, 5, 7]
    assert store.seqs_matching(one.id, even, after=5).tolist() == [7]
    assert [d.id for d in store.page(one.id, even, "01", 2)] == ["02", "04"]
    removed, _ = store.delete(one.id, ids=["00", "01", "02"], filter=even)  # ids that also match
    assert sorted(removed.tolist()) == [1, 3]
    assert [c.name for c in store.all_collections("u")] == ["one"]
    store.delete_collection(one.id)
    assert store.count(two.id) == 1
    assert store.get_collection("t", "one") is None


def test_concurrent_replacements_log_every_seq_they_remove(engine):
    """Writers replacing the same documents at once (HTTP workers, or servers sharing one database): each
    replaced seq is logged as removed exactly once, so an index following the log keeps no stale vector."""
    import threading

    store = DocumentStore(engine)
    c = store.create_collection("t", "c", None, 3, "cosine", "Flat")
    written: list[int] = []

    def write(seed: int) -> None:
        for n in range(15):
            seqs, _ = store.upsert(c.id, [doc(f"d{(seed + n + i) % 6}", n) for i in range(3)])
            written.extend(seqs.tolist())

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    changes = store.changes_since(c.id, 0, 3)
    removed = changes.removed.tolist()
    assert len(removed) == len(set(removed))
    assert sorted(removed + store.all_seqs(c.id).tolist()) == sorted(written)


def test_a_collection_id_is_never_handed_out_again_and_reads_of_a_deleted_one_say_so(engine):
    """Deleting the newest collection and making another gives a new id (SQLite alone would reuse it), so a stale
    holder of the old id can only hear that its collection is gone: every read and write by that id says so."""
    store = DocumentStore(engine)
    old = store.create_collection("acme", "notes", None, 3, "cosine", "Flat")
    store.upsert(old.id, [doc("a", 1.0)])
    store.delete_collection(old.id)
    new = store.create_collection("beta", "payroll", None, 3, "cosine", "Flat")
    store.upsert(new.id, [doc("secret", 2.0)])
    assert new.id > old.id
    for read in (lambda: store.get(old.id, "secret"), lambda: store.by_ids(old.id, ["secret"]),
                 lambda: store.page(old.id, None, None, 10), lambda: store.by_seqs(old.id, [1, 2, 3]),
                 lambda: store.by_seqs(old.id, []), lambda: store.count(old.id), lambda: store.has_text(old.id),
                 lambda: store.upsert(old.id, [doc("planted", 3.0)]), lambda: store.delete(old.id, ids=["secret"]),
                 lambda: store.delete_collection(old.id)):
        with pytest.raises(CollectionDeleted):
            read()
    assert [d.id for d in store.page(new.id, None, None, 10)] == ["secret"]


def test_collections_per_tenant_are_held_to_the_quota_and_listed_a_page_at_a_time(engine):
    store = DocumentStore(engine)
    for name in ("b", "a", "c"):
        store.create_collection("t", name, None, 3, "cosine", "Flat", quota=3)
    with pytest.raises(TooManyCollections):
        store.create_collection("t", "d", None, 3, "cosine", "Flat", quota=3)
    store.create_collection("u", "d", None, 3, "cosine", "Flat", quota=3)  # another tenant's own quota
    assert [c.name for c in store.all_collections("t", limit=2)] == ["a", "b"]
    assert [c.name for c in store.all_collections("t", after="b", limit=2)] == ["c"]
