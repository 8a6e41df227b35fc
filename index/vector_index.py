"""VectorIndex: one collection of vectors identified by caller-assigned int64 ids, on top of FAISS.

Thread-safety
-------------
VectorIndex takes no lock for writes. The caller serialises writes (``upsert``, ``remove``, ``train``,
setting ``tuning``) and never lets one run concurrently with anything else. Everything else -- searches
(``search``, ``prepare_allowed``, ``ids``, ``get_vectors``, ``stats``, ``len``) and ``freeze`` -- may run
concurrently with each other: e.g. a read/write lock, searches and ``freeze`` under the read lock,
writes under the write lock. ``Snapshot.write`` (the disk part of saving) needs no lock at all: it reads
only the snapshot's own copies, so the index may change meanwhile. FAISS releases the GIL while it
searches and while ``freeze`` copies an index; the state built lazily by searches (the GPU clone, an
AllowedSet's selector and gathered vectors) is built race-safely.

How ids are kept is chosen once, at construction, from the index type:

* direct ids (direct_ids.py): FAISS labels are the caller's ids -- IVF indexes, and Flat/PQ/SQ/...
  wrapped in ``IndexIDMap2``; they remove natively.
* tombstones (tombstones.py): indexes that cannot remove (HNSW, refine indexes) use positional labels;
  a deleted or replaced vector becomes a tombstone, excluded from searches with an ``IDSelectorBitmap``,
  and the index is rebuilt from its live vectors once the deleted fraction passes
  ``Tuning.compact_threshold`` (0.2), at the end of the write that crosses it.
* either, behind a training buffer (training.py) for types that need training (IVF, PQ, SQ, ...):
  until ``min_train_size`` vectors are held they live in an exact flat side index (searches are exact);
  the write that reaches the threshold trains the index on them and moves them all in.

Filtered search returns the true top-k among the allowed ids, never post-filtered: small allowed sets
are brute-forced over their vectors, larger ones go through FAISS with an IDSelector and boosted
efSearch/nprobe, and rows an approximate index answers short are completed exactly (see
:meth:`VectorIndex.search`). Ties are ordered by id.

Snapshots (:meth:`VectorIndex.freeze`) hold structure only; the knobs (tuning.py) come from whoever
loads them, so a new or retuned knob never makes an older snapshot unreadable.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from . import gpu, keepers, persistence, structure
from .allowed import AllowedSet
from .exact import exact_knn, finish, missing_score, widen, with_ties
from .persistence import CorruptIndexError, Restored, Snapshot
from .plans import Plan, Plans
from .tuning import Tuning, positive_int
from .validation import (
    check_dimension,
    check_factory,
    check_ids,
    check_k,
    check_metric,
    check_path,
    check_position,
    check_vectors,
    normalize_rows,
)

log = logging.getLogger("index")


class VectorIndex:
    """A FAISS index over vectors identified by non-negative int64 ids.

    Args:
        dimension: vector dimension.
        metric: ``"cosine"`` (vectors and queries are L2-normalised, score = cosine similarity, higher
            is better), ``"dot"`` (inner product, higher is better) or ``"l2"`` (score = Euclidean
            distance, not squared, lower is better).
        factory: a FAISS ``index_factory`` string ("Flat", "HNSW32", "IVF1024,Flat", "IVF256,PQ16",
            "IVF64,SQ8", ...). Invalid or dimension-incompatible strings, and parameters outside the
            bounds of index/factory.py (HNSW M, IVF nlist, PQ nbits, ...), raise ValueError.
        tuning: search and maintenance knobs (:class:`~index.tuning.Tuning`; default: its defaults).
        use_gpu: None = use a GPU clone for searches when faiss sees a GPU and the type supports it
            (Flat, IVF-Flat/PQ/SQ); True = require it (ValueError if impossible); False = never.
        restore: the contents of a snapshot file; only :meth:`load` passes it, so that a loaded index
            is built and checked by this same constructor.
    """

    def __init__(
        self,
        dimension: int,
        metric: str = "cosine",
        factory: str = "Flat",
        *,
        tuning: Tuning | None = None,
        use_gpu: bool | None = None,
        restore: Restored | None = None,
    ):
        self.dimension = check_dimension(dimension)
        self.metric = check_metric(metric)
        self.factory = check_factory(factory)
        self._version = 0  # bumped by every write (makes earlier AllowedSets stale)
        if restore is None:
            self._main, self._buffer = keepers.fresh(self.dimension, self.metric, self.factory)
        else:
            self._main, self._buffer = keepers.restored(self.dimension, self.metric, self.factory, restore)
        self._min_train_needed = structure.min_training_size(self._main.index)
        if gpu.choose(use_gpu, self._main.layout.gpu_capable, self.factory):
            self._main.gpu = gpu.GpuClone(self._main.index, self.factory)
            log.info("index %s: searches will use a GPU clone", self.factory)
        self.tuning = tuning

    @property
    def _store(self) -> keepers.Keeper:
        """Whichever keeper holds the vectors now: the training buffer until the index is trained."""
        return self._main if self._buffer is None else self._buffer

    @property
    def tuning(self) -> Tuning:
        """The knobs in force. Setting it is a write; a lower compact_threshold or min_train_size takes
        effect at the next write."""
        return self._tuning

    @tuning.setter
    def tuning(self, tuning: Tuning | None) -> None:
        self._tuning = Tuning.check(tuning)
        self._plans = Plans()
        hnsw = self._main.layout.hnsw
        if hnsw is not None:  # efSearch and nprobe are passed with every search instead
            hnsw.hnsw.efConstruction = self._tuning.ef_construction

    # ------------------------------------------------------------------ introspection
    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"VectorIndex({self.dimension}, {self.metric!r}, {self.factory!r}, live={len(self)})"

    def ids(self) -> np.ndarray:
        """Live ids, sorted ascending (int64)."""
        return self._store.sorted_ids()

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ids (normalised for cosine; approximate for compressed index types).

        Raises KeyError if an id is not present.
        """
        ids = check_ids(ids, allow_negative=True)
        store = self._store
        present = store.present(ids)
        if not present.all():
            raise KeyError(f"ids not in the index: {ids[~present][:10].tolist()}")
        return store.gather(store.labels(ids))

    def _min_train_size(self) -> int:
        if self._buffer is None:
            return 0
        return self._tuning.min_train_size or self._min_train_needed

    def stats(self) -> dict:
        """What the index holds and the knobs in force for its type (None where a knob does not apply)."""
        hnsw, ivf = self._main.layout.hnsw is not None, self._main.layout.ivf
        return {
            "dimension": self.dimension,
            "metric": self.metric,
            "factory": self.factory,
            "ids": self._main.name,
            "live": len(self),
            "stored": int(self._main.index.ntotal),
            "pending_untrained": 0 if self._buffer is None else int(self._buffer.index.ntotal),
            "tombstones": self._main.tombstones,
            "deleted_fraction": self._store.deleted_fraction,
            "is_trained": self._buffer is None,
            "min_train_size": self._min_train_size(),
            "ef_search": self._tuning.ef_search if hnsw else None,
            "ef_construction": self._tuning.ef_construction if hnsw else None,
            "nprobe": None if ivf is None else self._tuning.nprobe_for(ivf.nlist),
            "gpu": self._main.gpu is not None and self._main.gpu.enabled,
        }

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace vectors. Duplicate ids within one call: the last occurrence wins."""
        ids = check_ids(ids)
        vectors = check_vectors(vectors, self.dimension, ids.size)
        if ids.size == 0:
            return
        rev_unique, rev_first = np.unique(ids[::-1], return_index=True)
        if rev_unique.size != ids.size:
            keep = ids.size - 1 - rev_first
            ids, vectors = ids[keep], vectors[keep]
        if self.metric == "cosine":
            vectors = normalize_rows(vectors)
        self._changed()
        store = self._store
        present = ids[store.present(ids)]
        if present.size:
            store.delete(present)
        store.add(ids, vectors)
        if self._buffer is not None and len(self._buffer) >= self._min_train_size():
            self._train(None)
        self._maintain()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present (unknown ids are ignored)."""
        ids = np.unique(check_ids(ids, allow_negative=True))
        store = self._store
        present = ids[ids >= 0]
        present = present[store.present(present)]
        if present.size == 0:
            return 0
        self._changed()
        store.delete(present)
        self._maintain()
        return int(present.size)

    def train(self, vectors: np.ndarray) -> None:
        """Train now on a representative sample (e.g. drawn from the database) instead of waiting for
        ``min_train_size`` upserts. Vectors held in the training buffer are moved in. No-op if trained."""
        if self._buffer is None:
            return
        vectors = check_vectors(vectors, self.dimension)
        if self.metric == "cosine":
            vectors = normalize_rows(vectors)
        if vectors.shape[0] < 1:
            raise ValueError("train() needs at least one vector")
        try:
            self._train(vectors)
        except RuntimeError as exc:
            raise ValueError(f"training {self.factory!r} failed: {structure.faiss_message(exc)}") from None

    def _train(self, sample: np.ndarray | None) -> None:
        self._buffer.move_into(self._main, sample, self.factory)
        self._buffer = None
        self._changed()

    def _changed(self) -> None:
        """Every write: AllowedSets prepared before it go stale and the search plans are made again."""
        self._version += 1
        self._plans = Plans()

    def _maintain(self) -> None:
        t0 = time.perf_counter()
        purged = self._store.maintain(self._tuning.compact_threshold)
        if purged:
            log.info(
                "index %s: compacted, purged %d tombstones, %d live vectors re-added in %.2fs",
                self.factory, purged, len(self), time.perf_counter() - t0,
            )

    # ------------------------------------------------------------------ search
    def prepare_allowed(self, ids: np.ndarray) -> "AllowedSet":
        """``ids`` ready to be the allowed set of :meth:`search`, for as long as this index does not change.

        Preparing (sorting, dropping ids not in the index, mapping to FAISS labels, and later the
        FAISS selector) costs far more than a filtered search itself for large sets; a caller that
        searches with the same allowed ids again should prepare them once. A stale AllowedSet is
        prepared again by :meth:`search`, so it is always safe to pass.
        """
        allowed = np.unique(check_ids(ids, name="allowed", allow_negative=True))
        store = self._store
        allowed = allowed[allowed >= 0]
        allowed = allowed[store.present(allowed)]
        return AllowedSet(self, store, np.asarray(ids), store.labels(allowed), allowed)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: "np.ndarray | AllowedSet | None" = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query.

        Returns (scores [nq, k] float32, ids [nq, k] int64), best first; ties are ordered by id. Rows
        with fewer than k results are padded with id -1 and score -inf (cosine/dot) or +inf (l2).

        allowed (an array of ids, or an :class:`AllowedSet` from :meth:`prepare_allowed`) restricts the
        search to those ids and returns the top-k among them (never fewer than min(k, number of live
        allowed ids)). Small allowed sets (see ``Tuning.exact_search_*``) are searched exactly by brute
        force over their vectors; larger ones through FAISS with an IDSelector and efSearch/nprobe
        boosted by 1/sqrt(selectivity). ef_search / nprobe override the tuning for this call;
        exact=True forces brute force.
        """
        k = check_k(k)
        q = np.asarray(queries)
        q = check_vectors(q, self.dimension, 1 if q.ndim == 1 else None, name="queries")
        if self.metric == "cosine" and q.shape[0]:
            q = normalize_rows(q, name="queries")
        ef_search = None if ef_search is None else positive_int("ef_search", ef_search)
        nprobe = None if nprobe is None else positive_int("nprobe", nprobe)
        nq = q.shape[0]
        prepared = None if allowed is None else self._prepared(allowed)
        n_cand = len(self) if prepared is None else int(prepared.ids.size)
        if nq == 0 or n_cand == 0:
            return finish(np.zeros((nq, k), np.float32), np.full((nq, k), -1, np.int64), k, self.metric)

        # The training buffer is an exact flat index: searching it (with a selector) is the exact answer.
        if self._buffer is None and (exact or (prepared is not None and self._prefer_exact(n_cand))):
            dist, ext = self._search_exact(q, k, prepared)
        else:
            store = self._store
            if prepared is None:
                plan = self._plans.unfiltered(store, self._tuning, k, n_cand, ef_search, nprobe)
            else:
                plan = Plan(store, self._tuning, k, prepared.selector(), n_cand, ef_search, nprobe)
            dist, ext = with_ties(plan.search, q, k, n_cand, store.layout.exact, self.metric)
            found = ext >= 0
            if not found.all():  # a row missing nothing has at least k results
                dist, ext = self._complete_short_rows(q, k, prepared, n_cand, found, dist, ext)
        return finish(dist, ext, k, self.metric)

    def _complete_short_rows(self, q, k, prepared, n_cand, found, dist, ext):
        """Rows the approximate index answered with fewer than min(k, candidates) results (tombstones,
        a heavy filter, small IVF lists) answered exactly instead, so that callers always get them all."""
        short = np.flatnonzero(found.sum(axis=1) < min(k, n_cand))
        if short.size:
            d2, e2 = self._search_exact(q[short], k, prepared)
            pad = missing_score(self.metric)
            dist, ext = widen(dist, ext, k, pad)
            dist[short, :k], ext[short, :k] = d2, e2
            dist[short, k:], ext[short, k:] = pad, -1
        return dist, ext

    def _prepared(self, allowed) -> "AllowedSet":
        """``allowed`` as an AllowedSet that is current for this index."""
        prepared = allowed if isinstance(allowed, AllowedSet) else None
        if prepared is None or prepared.index is not self or not prepared.current:
            prepared = self.prepare_allowed(allowed.source if prepared is not None else allowed)
        return prepared

    def _prefer_exact(self, n_allowed: int) -> bool:
        layout, tuning = self._store.layout, self._tuning
        if layout.exact:
            return False  # searching a flat index with a selector is already exact
        if not layout.selector or n_allowed <= tuning.exact_search_min_ids:
            return True
        return n_allowed < tuning.exact_search_fraction * len(self) and n_allowed <= tuning.exact_search_max_ids

    def _search_exact(self, q, k, prepared: "AllowedSet | None"):
        """Brute force over the allowed (or all live) vectors."""
        store = self._store
        if prepared is None:
            labels, ext = store.live_labels_and_ids()
            held = None
        else:
            labels, ext, held = prepared.labels, prepared.ids, prepared.gathered()
        fetch = (lambda a, b: held[a:b]) if held is not None else (lambda a, b: store.gather(labels[a:b]))
        dist, pos = exact_knn(q, fetch, labels.size, self.dimension, k, self.metric != "l2", ext)
        return dist, np.where(pos >= 0, ext[np.maximum(pos, 0)], -1)

    # ------------------------------------------------------------------ persistence
    def freeze(self, position: int) -> Snapshot:
        """An in-memory copy of everything a snapshot file holds, tagged with ``position``.

        Copies the FAISS index (``faiss.clone_index``, which releases the GIL) and the id mapping: run it
        under the caller's read lock, concurrently with searches; then write the snapshot
        (:meth:`Snapshot.write`: streaming the copy out, hashing, the disk) with no lock held while the
        index goes on changing. The file holds structure only, no tuning knobs: dimension, metric, factory, the
        FAISS index (while untrained: the training buffer's instead), its id mapping, the tombstone
        count, the position.
        """
        indexes = {"main": self._main.index} if self._buffer is None else {"side": self._buffer.index}
        return Snapshot.take(self, check_position(position), self._main.tombstones, self._store.arrays(), indexes)

    def save(self, path, position: int) -> None:
        """``freeze(position).write(path)``: atomically write the index and ``position`` to one file.
        Holding a lock for all of it stalls writers for the disk write; prefer the two steps."""
        self.freeze(position).write(path)

    @classmethod
    def load(cls, path, *, tuning: Tuning | None = None, use_gpu: bool | None = None) -> tuple["VectorIndex", int]:
        """Load a file written by :meth:`save` / :meth:`Snapshot.write` (or by format 1, whose knobs are
        ignored); returns (index, position). The index runs with ``tuning``, never with knobs from the file.

        Raises FileNotFoundError if missing and CorruptIndexError (a ValueError) if the file is
        truncated, corrupted or inconsistent -- the caller should then rebuild from its database.
        """
        path = check_path(path)
        tuning = Tuning.check(tuning)
        version, meta, arrays, indexes = persistence.read_file(path)
        try:
            restore = persistence.restored(version, meta, arrays, indexes)
            index = cls(meta["dimension"], meta["metric"], meta["factory"], tuning=tuning, use_gpu=use_gpu,
                        restore=restore)
            return index, int(meta["position"])
        except CorruptIndexError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CorruptIndexError(f"{path}: inconsistent index file: {exc}") from exc
