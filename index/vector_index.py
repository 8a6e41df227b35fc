"""VectorIndex: one collection of vectors identified by caller-assigned int64 ids, on top of FAISS.

Thread-safety
-------------
VectorIndex does no locking of its own for writes. The caller must serialise writes (``upsert``,
``remove``, ``compact``, ``train``, attribute changes, ``save``) and must not search while a write is in
progress -- e.g. hold a read/write lock: searches under the read lock, everything else under the write
lock. Concurrent searches are fine (FAISS releases the GIL while searching; the only lazily built
state, the GPU clone, is guarded by an internal lock).

Deletes and updates work for every index type:

* Flat/PQ/SQ/... (wrapped in ``IndexIDMap2``) and IVF indexes remove vectors natively (``remove_ids``).
* HNSW (and other indexes without ``remove_ids``) use positional labels; a deleted or replaced vector
  becomes a tombstone, excluded from searches with an ``IDSelectorBitmap`` of live labels, and the index
  is rebuilt from its live vectors (:meth:`VectorIndex.compact`) once ``deleted_fraction`` exceeds
  ``compact_threshold`` (0.2), automatically at the end of the write that crosses it.

Index types that need training (IVF, PQ, SQ, ...) accept vectors at once: until ``min_train_size``
vectors are held they live in an exact flat side index (searches are exact); the write that reaches the
threshold trains the index on them and moves them all in.

Filtered search (``allowed_ids``) returns the top-k among the allowed ids, never post-filtered: sets of
at most ``exact_search_min_ids`` (4096) ids, or under ``exact_search_fraction`` (20%) of the live
vectors and at most ``exact_search_max_ids`` (50,000) ids, are brute-forced exactly over their stored
vectors; larger sets go through FAISS with an IDSelector (IDSelectorBatch of ids, or an
IDSelectorBitmap over positions that also drops tombstones) and efSearch/nprobe raised by
1/sqrt(selectivity). Any row an approximate index answers with fewer than min(k, candidates) results
is recomputed exactly. Ties are ordered by id. A set prepared once (:meth:`VectorIndex.prepare_allowed`)
keeps its selector and, up to ``GATHERED_MAX_BYTES``, its gathered vectors until the index changes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import faiss
import numpy as np

from . import gpu, persistence, structure
from .exact import exact_knn, select_topk
from .ids import DirectIds, PositionalIds
from .persistence import CorruptIndexError
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

DEFAULT_EF_SEARCH = 128
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_COMPACT_THRESHOLD = 0.2
# Filtered searches are answered by brute force over the allowed vectors when the allowed set (live
# ids only) has at most EXACT_SEARCH_MIN_IDS ids, or is under EXACT_SEARCH_FRACTION of the live vectors
# while not larger than EXACT_SEARCH_MAX_IDS (bounds the cost of gathering the vectors).
EXACT_SEARCH_MIN_IDS = 4096
EXACT_SEARCH_FRACTION = 0.2
EXACT_SEARCH_MAX_IDS = 50_000
# A prepared allowed set keeps its gathered vectors for later exact searches when they take at most
# this many bytes (10k vectors of 640-d fit); larger sets are gathered again on each search.
GATHERED_MAX_BYTES = 32 << 20
# When a selector keeps only a fraction s of the index, efSearch / nprobe are scaled by 1/sqrt(s)
# (at most this factor) so that filtered and tombstoned searches keep their recall.
MAX_FILTER_BOOST = 16.0
_ADD_CHUNK = 65536
# Extra results fetched beyond k so that ties at the k-th position can be ordered by id.
TIE_MARGIN = 8
_TRAIN_SAMPLE_CAP = 262_144


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
        use_gpu: None = use a GPU clone for searches when faiss sees a GPU and the type supports it
            (Flat, IVF-Flat/PQ/SQ); True = require it (ValueError if impossible); False = never.
        ef_search, ef_construction: HNSW parameters (defaults 128 / 128).
        nprobe: IVF lists probed per query (default ~sqrt(nlist), at least 8).
        min_train_size: override the number of vectors collected before training.
    """

    def __init__(
        self,
        dimension: int,
        metric: str = "cosine",
        factory: str = "Flat",
        *,
        use_gpu: bool | None = None,
        ef_search: int | None = None,
        ef_construction: int | None = None,
        nprobe: int | None = None,
        min_train_size: int | None = None,
    ):
        self.dimension = check_dimension(dimension)
        self.metric = check_metric(metric)
        self.factory = check_factory(factory)
        index = structure.create(self.dimension, self.metric, self.factory)
        reason = structure.unsupported_reason(index)
        if reason:
            raise ValueError(f"factory {self.factory!r}: {reason}")
        mode = structure.classify(index)
        layout = structure.describe(index, mode)
        if mode == "tombstone" and not layout.selector:
            raise ValueError(
                f"factory {self.factory!r}: {type(index).__name__} supports neither vector removal nor "
                "filtered search, so deletes cannot be implemented; choose another index type"
            )
        if mode == "idmap":
            wrapped = faiss.IndexIDMap2(index)
            wrapped.own_fields = True
            index.this.disown()
            index = wrapped
        self._set_main(index, mode)
        if self._layout.ivf is not None:
            # reconstruct(label) for exact searches and compaction: a hashtable when labels are the
            # caller's ids (supports removal), an array when labels are positions (refine indexes).
            direct = faiss.DirectMap.Hashtable if mode == "ivf" else faiss.DirectMap.Array
            self._layout.ivf.set_direct_map_type(direct)
        if self._layout.hnsw is None and (ef_search is not None or ef_construction is not None):
            raise ValueError(f"ef_search/ef_construction given but {self.factory!r} is not an HNSW index")
        self.ef_construction = DEFAULT_EF_CONSTRUCTION if ef_construction is None else ef_construction
        self.ef_search = DEFAULT_EF_SEARCH if ef_search is None else ef_search
        if self._layout.ivf is not None:
            self.nprobe = structure.default_nprobe(self._layout.ivf.nlist) if nprobe is None else nprobe
        elif nprobe is not None:
            raise ValueError(f"nprobe given but {self.factory!r} is not an IVF index")
        self._ids = DirectIds() if mode != "tombstone" else PositionalIds()
        self._tombstones = 0
        self._version = 0  # bumped by every change of ids or labels (invalidates AllowedSet)
        self._side = None if self._main.is_trained else self._new_side()
        self._min_train = structure.min_training_size(self._main)
        if min_train_size is not None:
            self.min_train_size = min_train_size
        self.compact_threshold = DEFAULT_COMPACT_THRESHOLD
        self.exact_search_min_ids = EXACT_SEARCH_MIN_IDS
        self.exact_search_fraction = EXACT_SEARCH_FRACTION
        self.exact_search_max_ids = EXACT_SEARCH_MAX_IDS
        self._init_gpu(use_gpu)

    # ------------------------------------------------------------------ setup helpers
    def _set_main(self, index, mode: str) -> None:
        self._main = index
        self._mode = mode
        self._layout = structure.describe(index, mode)

    def _new_side(self):
        flat = faiss.IndexFlat(self.dimension, structure.METRIC_TYPES[self.metric])
        side = faiss.IndexIDMap2(flat)
        side.own_fields = True
        flat.this.disown()
        return side

    def _init_gpu(self, use_gpu: bool | None) -> None:
        self._gpu_lock = threading.Lock()
        self._gpu_index = None
        self._gpu_dirty = True
        capable = self._layout.gpu_capable
        if use_gpu is None:
            self._use_gpu = capable and gpu.gpu_count() > 0
        elif use_gpu:
            if not capable:
                raise ValueError(f"use_gpu=True but {self.factory!r} cannot be searched on a GPU (Flat/IVF only)")
            if gpu.gpu_count() == 0:
                raise ValueError("use_gpu=True but faiss sees no GPU (is faiss-gpu installed?)")
            self._use_gpu = True
        else:
            self._use_gpu = False
        if self._use_gpu:
            log.info("index %s: searches will use a GPU clone", self.factory)

    # ------------------------------------------------------------------ tunables
    @property
    def ef_search(self) -> int | None:
        """HNSW efSearch (None for non-HNSW indexes); raised to k and boosted for filtered searches."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = _positive_int("ef_search", value) if self._layout.hnsw is not None else None
        if self._layout.hnsw is not None:
            self._layout.hnsw.hnsw.efSearch = self._ef_search

    @property
    def ef_construction(self) -> int | None:
        """HNSW efConstruction used for vectors added from now on (None for non-HNSW indexes)."""
        return None if self._layout.hnsw is None else int(self._layout.hnsw.hnsw.efConstruction)

    @ef_construction.setter
    def ef_construction(self, value: int) -> None:
        value = _positive_int("ef_construction", value)
        if self._layout.hnsw is not None:
            self._layout.hnsw.hnsw.efConstruction = value

    @property
    def nprobe(self) -> int | None:
        """IVF lists probed per query (None for non-IVF indexes)."""
        return None if self._layout.ivf is None else int(self._layout.ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._layout.ivf is None:
            raise ValueError(f"{self.factory!r} is not an IVF index")
        self._layout.ivf.nprobe = min(_positive_int("nprobe", value), int(self._layout.ivf.nlist))

    @property
    def min_train_size(self) -> int:
        """Vectors collected (exactly searchable) before the index is trained; 0 if no training."""
        return self._min_train

    @min_train_size.setter
    def min_train_size(self, value: int) -> None:
        value = _positive_int("min_train_size", value)
        self._min_train = value if not self._main.is_trained else 0

    # ------------------------------------------------------------------ introspection
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id) -> bool:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            return False
        return int(id) in self._ids

    def __repr__(self) -> str:
        return (
            f"VectorIndex(dimension={self.dimension}, metric={self.metric!r}, factory={self.factory!r}, "
            f"live={len(self)}, trained={self.is_trained}, deleted_fraction={self.deleted_fraction:.3f})"
        )

    def ids(self) -> np.ndarray:
        """Live ids, sorted ascending (int64)."""
        return self._ids.sorted_ids()

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ids (normalised for cosine; approximate for compressed index types).

        Raises KeyError if an id is not present.
        """
        ids = check_ids(ids, allow_negative=True)
        present = self._ids.present(ids)
        if not present.all():
            raise KeyError(f"ids not in the index: {ids[~present][:10].tolist()}")
        return self._gather(self._ids.labels(ids))

    @property
    def is_trained(self) -> bool:
        """False while vectors are still held in the exact side index awaiting training."""
        return self._side is None

    @property
    def deleted_fraction(self) -> float:
        """Tombstones / stored vectors (always 0 for index types that remove natively)."""
        total = self._main.ntotal if self._side is None else 0
        return self._tombstones / total if total else 0.0

    @property
    def uses_gpu(self) -> bool:
        return self._use_gpu

    def stats(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "metric": self.metric,
            "factory": self.factory,
            "mode": self._mode,
            "live": len(self),
            "stored": int(self._main.ntotal),
            "pending_untrained": 0 if self._side is None else int(self._side.ntotal),
            "tombstones": self._tombstones,
            "deleted_fraction": self.deleted_fraction,
            "is_trained": self.is_trained,
            "min_train_size": self.min_train_size,
            "ef_search": self.ef_search,
            "ef_construction": self.ef_construction,
            "nprobe": self.nprobe,
            "gpu": self._use_gpu,
        }

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace vectors. Duplicate ids within one call: the last occurrence wins."""
        ids = check_ids(ids)
        vectors = check_vectors(vectors, self.dimension, ids.size)
        if ids.size == 0:
            return
        # last occurrence of each id wins
        rev_unique, rev_first = np.unique(ids[::-1], return_index=True)
        if rev_unique.size != ids.size:
            keep = ids.size - 1 - rev_first
            ids, vectors = ids[keep], vectors[keep]
        if self.metric == "cosine":
            vectors = normalize_rows(vectors)
        self._delete_present(ids)
        self._add(ids, vectors)
        self._after_write()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present (unknown ids are ignored)."""
        ids = np.unique(check_ids(ids, allow_negative=True))
        removed = self._delete_present(ids[ids >= 0])
        if removed:
            self._after_write()
        return removed

    def compact(self) -> int:
        """Rebuild a tombstoned index from its live vectors; returns the number of tombstones purged."""
        if self._mode != "tombstone" or self._side is not None or self._tombstones == 0:
            return 0
        t0 = time.perf_counter()
        purged = self._tombstones
        labels = np.flatnonzero(self._ids.int2ext >= 0)
        ext = self._ids.int2ext[labels]
        vectors = self._reconstruct(self._main, labels)
        self._main.reset()
        self._ids.reset(np.empty(0, dtype=np.int64))
        self._tombstones = 0
        self._version += 1
        self._append_positional(ext, vectors)
        self._gpu_dirty = True
        log.info(
            "index %s: compacted, purged %d tombstones, %d live vectors re-added in %.2fs",
            self.factory, purged, ext.size, time.perf_counter() - t0,
        )
        return purged

    def train(self, vectors: np.ndarray) -> None:
        """Train now on a representative sample (e.g. drawn from the database) instead of waiting for
        ``min_train_size`` upserts. Vectors held in the side index are moved in. No-op if trained."""
        if self._side is None:
            return
        vectors = check_vectors(vectors, self.dimension)
        if self.metric == "cosine":
            vectors = normalize_rows(vectors)
        if vectors.shape[0] < 1:
            raise ValueError("train() needs at least one vector")
        try:
            self._train_and_move(vectors)
        except RuntimeError as exc:
            raise ValueError(f"training {self.factory!r} failed: {structure.faiss_message(exc)}") from None

    def _delete_present(self, ids: np.ndarray) -> int:
        present = ids[self._ids.present(ids)]
        if present.size == 0:
            return 0
        labels = self._ids.labels(present)
        if self._side is not None:
            self._side.remove_ids(labels)
            self._forget(present, labels)
        elif self._mode == "tombstone":
            self._ids.kill(labels)
            self._tombstones += present.size
        else:
            removed = self._main.remove_ids(labels)
            if removed != present.size:  # pragma: no cover - defensive
                raise RuntimeError(f"FAISS removed {removed} vectors, expected {present.size}")
            self._forget(present, labels)
        self._gpu_dirty = True
        self._version += 1
        return int(present.size)

    def _forget(self, ids: np.ndarray, labels: np.ndarray) -> None:
        if self._mode == "tombstone":
            self._ids.kill(labels)
        else:
            self._ids.discard(ids)

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._version += 1
        if self._side is not None:
            if self._mode == "tombstone":
                labels = np.arange(self._ids.n_labels, self._ids.n_labels + ids.size, dtype=np.int64)
                self._side.add_with_ids(vectors, labels)
                self._ids.append(ids)
            else:
                self._side.add_with_ids(vectors, ids)
                self._ids.add(ids)
            if self._side.ntotal >= self._min_train:
                self._train_and_move(None)
        elif self._mode == "tombstone":
            self._append_positional(ids, vectors)
        else:
            for a in range(0, ids.size, _ADD_CHUNK):
                self._main.add_with_ids(vectors[a : a + _ADD_CHUNK], ids[a : a + _ADD_CHUNK])
            self._ids.add(ids)
            self._mirror_gpu_add(ids, vectors)

    def _append_positional(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        start = self._main.ntotal
        if start != self._ids.n_labels:  # pragma: no cover - defensive
            raise RuntimeError(f"label space out of sync: ntotal={start} labels={self._ids.n_labels}")
        for a in range(0, ids.size, _ADD_CHUNK):
            self._main.add(vectors[a : a + _ADD_CHUNK])
        self._ids.append(ids)

    def _after_write(self) -> None:
        if (
            self._mode == "tombstone"
            and self._side is None
            and self._tombstones
            and self.deleted_fraction > self.compact_threshold
        ):
            self.compact()

    def _train_and_move(self, sample: np.ndarray | None) -> None:
        side = self._side
        n = side.ntotal
        labels = faiss.vector_to_array(side.id_map).astype(np.int64)
        vectors = side.index.reconstruct_n(0, n) if n else np.empty((0, self.dimension), np.float32)
        if sample is None:
            sample = vectors
            if n > _TRAIN_SAMPLE_CAP:
                pick = np.sort(np.random.default_rng(0).choice(n, _TRAIN_SAMPLE_CAP, replace=False))
                sample = vectors[pick]
        t0 = time.perf_counter()
        log.info("index %s: training on %d vectors (%d held)", self.factory, sample.shape[0], n)
        saved_map = self._ids.int2ext.copy() if self._mode == "tombstone" else None
        try:
            self._main.train(sample)
            if self._mode == "tombstone":
                ext = self._ids.int2ext[labels]
                self._ids.reset(np.empty(0, dtype=np.int64))
                self._append_positional(ext, vectors)
            else:
                for a in range(0, n, _ADD_CHUNK):
                    self._main.add_with_ids(vectors[a : a + _ADD_CHUNK], labels[a : a + _ADD_CHUNK])
        except Exception:
            # keep serving from the side index, which still holds everything
            log.exception("index %s: training failed", self.factory)
            self._main.reset()
            if saved_map is not None:
                self._ids.reset(saved_map)
            raise
        self._side = None
        self._gpu_dirty = True
        self._version += 1
        log.info(
            "index %s: trained and moved %d vectors into the index in %.2fs",
            self.factory, n, time.perf_counter() - t0,
        )

    # ------------------------------------------------------------------ search
    def prepare_allowed(self, allowed_ids: np.ndarray) -> "AllowedSet":
        """``allowed_ids`` ready for :meth:`search`, for as long as this index does not change.

        Preparing (sorting, dropping ids not in the index, mapping to FAISS labels, and later the
        FAISS selector) costs far more than a filtered search itself for large sets; a caller that
        searches with the same allowed ids again should prepare them once. A stale AllowedSet is
        prepared again by :meth:`search`, so it is always safe to pass.
        """
        allowed = np.unique(check_ids(allowed_ids, name="allowed_ids", allow_negative=True))
        allowed = allowed[allowed >= 0]
        allowed = allowed[self._ids.present(allowed)]
        return AllowedSet(self, self._version, np.asarray(allowed_ids), self._ids.labels(allowed), allowed)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: "np.ndarray | AllowedSet | None" = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query.

        Returns (scores [nq, k] float32, ids [nq, k] int64), best first; ties are ordered by id. Rows
        with fewer than k results are padded with id -1 and score -inf (cosine/dot) or +inf (l2).

        allowed_ids (an array, or an :class:`AllowedSet` from :meth:`prepare_allowed`) restricts the
        search to those ids and returns the top-k among them (never fewer
        than min(k, number of live allowed ids)). Small allowed sets (see ``exact_search_*``) are
        searched exactly by brute force over their vectors; larger ones through FAISS with an
        IDSelector and efSearch/nprobe boosted by 1/sqrt(selectivity). ef_search / nprobe override the
        index defaults for this call; exact=True forces brute force.
        """
        k = check_k(k)
        q = np.asarray(queries)
        single = q.ndim == 1
        q = check_vectors(q, self.dimension, 1 if single else None, name="queries")
        if self.metric == "cosine" and q.shape[0]:
            q = normalize_rows(q, name="queries")
        ef_search = None if ef_search is None else _positive_int("ef_search", ef_search)
        nprobe = None if nprobe is None else _positive_int("nprobe", nprobe)
        nq = q.shape[0]

        cand: tuple[np.ndarray, np.ndarray] | None = None  # (labels, ids) sorted by id
        prepared: AllowedSet | None = None
        if allowed_ids is not None:
            prepared = allowed_ids if isinstance(allowed_ids, AllowedSet) else None
            if prepared is None or prepared.index is not self or not prepared.current:
                prepared = self.prepare_allowed(allowed_ids.source if prepared is not None else allowed_ids)
            cand = (prepared.labels, prepared.ids)
            n_cand = int(prepared.ids.size)
        else:
            n_cand = len(self)
        if nq == 0 or n_cand == 0:
            return self._finish(np.zeros((nq, k), np.float32), np.full((nq, k), -1, np.int64), k)

        if self._side is not None:
            dist, ext = self._with_ties(self._side_searcher(cand), q, k, n_cand, resolve=True)
        elif exact or (cand is not None and self._prefer_exact(n_cand)):
            dist, ext = self._search_exact(q, k, cand, prepared)
        else:
            searcher = self._index_searcher(k, prepared, n_cand, ef_search, nprobe)
            dist, ext = self._with_ties(searcher, q, k, n_cand, resolve=self._layout.exact)
            expected = min(k, n_cand)
            short = np.flatnonzero((ext >= 0).sum(axis=1) < expected)
            if short.size:
                # The approximate index returned too few (tombstones, heavy filter, small IVF lists):
                # answer those rows exactly so callers always get min(k, candidates) results.
                d2, e2 = self._search_exact(q[short], k, cand, prepared)
                dist, ext = _widen(dist, ext, k, self._pad_dist)
                dist[short, :k], ext[short, :k] = d2, e2
                dist[short, k:], ext[short, k:] = self._pad_dist, -1
        return self._finish(dist, ext, k)

    @property
    def _pad_dist(self) -> float:
        return np.inf if self.metric == "l2" else -np.inf

    def _prefer_exact(self, n_allowed: int) -> bool:
        if self._layout.exact:
            return False  # searching a flat index with a selector is already exact
        if not self._layout.selector:
            return True
        if n_allowed <= self.exact_search_min_ids:
            return True
        return n_allowed < self.exact_search_fraction * len(self) and n_allowed <= self.exact_search_max_ids

    def _with_ties(self, searcher, q, k, n_avail, resolve: bool):
        """Run searcher(q, kf) for kf a little above k so that equal scores straddling the k-th
        position can be ordered by id. With resolve (exact indexes), rows whose tie run reaches the
        last fetched column are searched again with a wider kf until the tie is closed."""
        kf = min(k + TIE_MARGIN, n_avail) if n_avail > k else k
        dist, ext = searcher(q, kf)
        ext = np.asarray(ext)
        while resolve and kf < n_avail:
            key = dist if self.metric == "l2" else -dist
            open_tie = (ext[:, -1] >= 0) & (key[:, k - 1] == key[:, -1])
            if not open_tie.any():
                break
            kf2 = min(4 * kf, n_avail)
            rows = np.flatnonzero(open_tie)
            d2, e2 = searcher(q[rows], kf2)
            dist, ext = _widen(dist, ext, kf2, self._pad_dist)
            dist[rows], ext[rows] = d2, e2
            kf = kf2
        return dist, ext

    def _side_searcher(self, cand):
        params = None
        if cand is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(cand[0]))

        def run(q, kf):
            dist, labels = self._side.search(q, kf, params=params)
            return dist, self._ids.to_external(labels)

        return run

    def _search_exact(self, q, k, cand, prepared: "AllowedSet | None" = None):
        if cand is None:
            cand = self._ids.live_labels_and_ids()
        labels, ext = cand
        held = prepared.gathered() if prepared is not None else None
        dist, pos = exact_knn(
            q,
            (lambda a, b: held[a:b]) if held is not None else (lambda a, b: self._gather(labels[a:b])),
            labels.size,
            self.dimension,
            k,
            self.metric != "l2",
            ext,
        )
        return dist, np.where(pos >= 0, ext[np.maximum(pos, 0)], -1)

    def _index_searcher(self, k, prepared, n_cand, ef_search, nprobe):
        layout = self._layout
        ntotal = max(int(self._main.ntotal), 1)
        sel = None
        keep = None  # numpy buffer referenced by a bitmap selector; must outlive the searches
        if prepared is not None:
            sel, keep = prepared.selector()
        elif self._tombstones:
            keep = self._ids.live_bitmap()
            sel = faiss.IDSelectorBitmap(keep)
        boost = 1.0
        if sel is not None:
            boost = min(MAX_FILTER_BOOST, 1.0 / math.sqrt(max(n_cand / ntotal, 1e-12)))
        ef = nprobe_eff = None
        if layout.hnsw is not None:
            ef = int(math.ceil(max(ef_search or self._ef_search, k + TIE_MARGIN) * boost))
        if layout.ivf is not None:
            nprobe_eff = min(int(math.ceil((nprobe or self.nprobe) * boost)), int(layout.ivf.nlist))
        params = structure.search_params(self._main, sel, ef, nprobe_eff)

        def run(q, kf):
            if sel is None and self._use_gpu:
                result = self._search_gpu(q, kf, nprobe_eff)
                if result is not None:
                    return result[0], self._ids.to_external(result[1])
            dist, labels = self._main.search(q, kf, params=params)
            _ = keep
            return dist, self._ids.to_external(labels)

        return run

    # ------------------------------------------------------------------ GPU
    def _search_gpu(self, q, k, nprobe):
        if k > gpu.GPU_MAX_K or (nprobe is not None and nprobe > gpu.GPU_MAX_NPROBE):
            return None
        try:
            with self._gpu_lock:
                if self._gpu_dirty or self._gpu_index is None:
                    self._gpu_index = None
                    self._gpu_index = gpu.to_gpu(self._main)
                    self._gpu_dirty = False
                index = self._gpu_index
            params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe is not None else None
            return index.search(q, k, params=params)
        except Exception as exc:  # unsupported type / out of GPU memory: stay correct on CPU
            log.warning("index %s: GPU search failed (%s); using the CPU index from now on", self.factory, exc)
            self._use_gpu = False
            self._gpu_index = None
            return None

    def _mirror_gpu_add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Keep a clean GPU clone in sync with pure additions instead of re-cloning everything."""
        if not self._use_gpu or self._gpu_dirty or self._gpu_index is None:
            self._gpu_dirty = True
            return
        try:
            self._gpu_index.add_with_ids(vectors, ids)
        except Exception:
            self._gpu_dirty = True

    # ------------------------------------------------------------------ helpers
    def _gather(self, labels: np.ndarray) -> np.ndarray:
        """Vectors of ``labels`` from the index that holds them now (the side index until training)."""
        return self._reconstruct(self._main if self._side is None else self._side, labels)

    def _reconstruct(self, store, labels: np.ndarray) -> np.ndarray:
        if labels.size == 0:
            return np.empty((0, self.dimension), dtype=np.float32)
        return store.reconstruct_batch(np.ascontiguousarray(labels, dtype=np.int64))

    def _finish(self, dist: np.ndarray, ext: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances -> scores, padding, and the top k per row ordered by (score, id)."""
        dist = np.asarray(dist, dtype=np.float32)
        ext = np.asarray(ext, dtype=np.int64)
        missing = ext < 0
        if self.metric == "l2":
            scores = np.sqrt(np.maximum(dist, 0.0)).astype(np.float32)
            scores[missing] = np.inf
            key = scores
        else:
            scores = dist.copy()
            scores[missing] = -np.inf
            key = -scores
        tie = np.where(missing, np.iinfo(np.int64).max, ext)
        order = select_topk(np.where(missing, np.inf, key), tie, k)
        scores = np.take_along_axis(scores, order, axis=1)
        ext = np.take_along_axis(ext, order, axis=1)
        if ext.shape[1] < k:
            scores, ext = _widen(scores, ext, k, self._pad_dist)
        return scores, ext

    # ------------------------------------------------------------------ persistence
    def save(self, path, position: int) -> None:
        """Atomically write the index (CPU copy), its id mapping and ``position`` to one file."""
        path = check_path(path)
        position = check_position(position)
        meta = {
            "kind": "VectorIndex",
            "dimension": self.dimension,
            "metric": self.metric,
            "factory": self.factory,
            "mode": self._mode,
            "position": position,
            "tombstones": self._tombstones,
            "ef_search": self._ef_search,
            "ef_construction": self.ef_construction,
            "nprobe": self.nprobe,
            "min_train_size": self._min_train,
            "compact_threshold": self.compact_threshold,
            "exact_search_min_ids": self.exact_search_min_ids,
            "exact_search_fraction": self.exact_search_fraction,
            "exact_search_max_ids": self.exact_search_max_ids,
            "faiss_version": faiss.__version__,
            "saved_at": time.time(),
        }
        if self._mode == "tombstone":
            arrays = {"int2ext": self._ids.int2ext}
        else:
            arrays = {"ids": self._ids.sorted_ids()}
        indexes = {"main": self._main}
        if self._side is not None:
            indexes["side"] = self._side
        persistence.write_file(path, meta, arrays, indexes)

    @classmethod
    def load(cls, path, *, use_gpu: bool | None = None) -> tuple["VectorIndex", int]:
        """Load a file written by :meth:`save`; returns (index, position).

        Raises FileNotFoundError if missing and CorruptIndexError (a ValueError) if the file is
        truncated, corrupted or inconsistent -- the caller should then rebuild from its database.
        """
        path = check_path(path)
        meta, arrays, indexes = persistence.read_file(path)
        try:
            return cls._from_parts(meta, arrays, indexes, use_gpu), int(meta["position"])
        except CorruptIndexError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CorruptIndexError(f"{path}: inconsistent index file: {exc}") from exc

    @classmethod
    def _from_parts(cls, meta, arrays, indexes, use_gpu) -> "VectorIndex":
        if meta.get("kind") != "VectorIndex":
            raise CorruptIndexError("not a VectorIndex file")
        self = cls.__new__(cls)
        self.dimension = check_dimension(meta["dimension"])
        self.metric = check_metric(meta["metric"])
        self.factory = check_factory(meta["factory"])
        mode = meta["mode"]
        if mode not in ("ivf", "idmap", "tombstone"):
            raise CorruptIndexError(f"unknown mode {mode!r}")
        main = indexes["main"]
        if main.d != self.dimension or main.metric_type != structure.METRIC_TYPES[self.metric]:
            raise CorruptIndexError("FAISS index dimension/metric do not match the metadata")
        self._set_main(main, mode)
        self._side = indexes.get("side")
        if self._side is not None and self._side.d != self.dimension:
            raise CorruptIndexError("side index dimension does not match")
        if self._layout.hnsw is not None:
            self._ef_search = _positive_int("ef_search", meta["ef_search"])
            self._layout.hnsw.hnsw.efSearch = self._ef_search
            self.ef_construction = meta["ef_construction"]
        else:
            self._ef_search = None
        if self._layout.ivf is not None:
            self.nprobe = meta["nprobe"]
        self._min_train = int(meta["min_train_size"])
        self._tombstones = int(meta["tombstones"])
        self._version = 0
        self.compact_threshold = float(meta["compact_threshold"])
        self.exact_search_min_ids = int(meta["exact_search_min_ids"])
        self.exact_search_fraction = float(meta["exact_search_fraction"])
        self.exact_search_max_ids = int(meta["exact_search_max_ids"])
        stored = self._side.ntotal if self._side is not None else main.ntotal
        if mode == "tombstone":
            int2ext = arrays["int2ext"].astype(np.int64)
            self._ids = PositionalIds(int2ext)
            dead = int(int2ext.size - len(self._ids))
            if self._side is None:
                ok = main.ntotal == int2ext.size and dead == self._tombstones
            else:
                ok = main.ntotal == 0 and self._side.ntotal == len(self._ids) and self._tombstones == 0
        else:
            ids = arrays["ids"].astype(np.int64)
            self._ids = DirectIds(ids)
            ok = len(self._ids) == ids.size == stored and self._tombstones == 0
            if self._side is not None:
                ok = ok and main.ntotal == 0
        if not ok:
            raise CorruptIndexError("id mapping does not match the FAISS index contents")
        if (self._side is None) != bool(main.is_trained):
            raise CorruptIndexError("training state does not match the stored indexes")
        self._init_gpu(use_gpu)
        return self


class AllowedSet:
    """Allowed ids prepared for one state of one index (see :meth:`VectorIndex.prepare_allowed`)."""

    __slots__ = ("index", "version", "source", "labels", "ids", "_selector", "_gathered")

    def __init__(self, index: VectorIndex, version: int, source: np.ndarray, labels: np.ndarray,
                 ids: np.ndarray) -> None:
        self.index, self.version, self.source = index, version, source
        self.labels, self.ids = labels, ids  # sorted by id; only ids present in the index
        self._selector = None  # (selector, the buffer it reads or None), built on first use
        self._gathered: np.ndarray | None = None  # their vectors, for exact searches, gathered on first use

    @property
    def current(self) -> bool:
        """Whether the index is unchanged since this set was prepared."""
        return self.version == self.index._version

    def selector(self):
        """(FAISS selector of these labels, numpy buffer it reads or None), built once: a bitmap over a
        tombstoned index's label space, else an IDSelectorBatch. Keep the buffer alive while searching."""
        built = self._selector
        if built is None:  # searches may race here: each builds a whole pair, one is kept
            if self.index._mode == "tombstone":
                bitmap = self.index._ids.bitmap_of(self.labels)
                built = (faiss.IDSelectorBitmap(bitmap), bitmap)
            else:
                built = (faiss.IDSelectorBatch(self.labels), None)
            self._selector = built
        return built

    def gathered(self) -> np.ndarray | None:
        """The allowed vectors in ``labels`` order, gathered once for exact searches; None when they
        would take more than GATHERED_MAX_BYTES (the caller then gathers them chunk by chunk)."""
        held = self._gathered
        if held is None and self.labels.size * self.index.dimension * 4 <= GATHERED_MAX_BYTES:
            held = self.index._gather(self.labels)
            self._gathered = held  # searches may race here: each gathers, one is kept
        return held


def _widen(dist: np.ndarray, ext: np.ndarray, width: int, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """Pad result arrays with missing entries up to ``width`` columns (copies)."""
    extra = width - dist.shape[1]
    if extra <= 0:
        return dist.copy(), ext.copy()
    dist = np.pad(np.asarray(dist, dtype=np.float32), ((0, 0), (0, extra)), constant_values=pad)
    ext = np.pad(np.asarray(ext, dtype=np.int64), ((0, 0), (0, extra)), constant_values=-1)
    return dist, ext


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
