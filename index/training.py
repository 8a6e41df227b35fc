"""The training buffer of an index type that needs training (IVF, PQ, SQ, OPQ/PCA, ...).

Such an index cannot take a vector before it is trained, and training on a handful of vectors gives
poor centroids/codebooks, so the vectors are held in an exact flat side index (searched exactly) until
there are ``min_train_size`` of them; the write that reaches it trains the index on them and moves them
all in, and the buffer is gone for good. Its labels are always the caller's ids, whatever the main
index keeps (direct ids or tombstones, e.g. "IVF64,PQ16,RFlat" is tombstoned and needs training), so
it is a :class:`~index.direct_ids.DirectIds` over ``IndexIDMap2(IndexFlat)``.
"""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np

from . import structure
from .direct_ids import DirectIds

log = logging.getLogger("index")

# Training on more than this many held vectors buys little and costs k-means time: a seeded sample.
TRAIN_SAMPLE_CAP = 262_144


def relabel_positions(index, int2ext: np.ndarray) -> np.ndarray:
    """Relabel a format-1 training buffer of a tombstoned type, whose labels were positions that
    ``int2ext`` maps to the caller's ids, with the ids; returns them sorted (ValueError on a mismatch)."""
    labels = faiss.vector_to_array(index.id_map).astype(np.int64)
    int2ext = int2ext.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= int2ext.size or (int2ext[labels] < 0).any()):
        raise ValueError("id mapping does not match the FAISS index contents")
    ids = int2ext[labels]
    faiss.copy_array_to_vector(ids, index.id_map)
    index.construct_rev_map()
    return np.sort(ids)


class TrainingBuffer(DirectIds):
    """Vectors held exactly until the main index can be trained."""

    @classmethod
    def empty(cls, dimension: int, metric: str) -> "TrainingBuffer":
        return cls(structure.wrap_ids(faiss.IndexFlat(dimension, structure.METRIC_TYPES[metric])))

    def move_into(self, target, sample: np.ndarray | None, factory: str) -> None:
        """Train ``target``'s (empty) index on ``sample`` (default: the held vectors, or a seeded
        sample of them) and move every held vector into it. On failure ``target`` is emptied again and
        this buffer still holds everything, so searches go on from here."""
        n = self.index.ntotal
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vectors = self.index.index.reconstruct_n(0, n) if n else np.empty((0, self.index.d), np.float32)
        if sample is None:
            sample = vectors
            if n > TRAIN_SAMPLE_CAP:
                pick = np.sort(np.random.default_rng(0).choice(n, TRAIN_SAMPLE_CAP, replace=False))
                sample = vectors[pick]
        t0 = time.perf_counter()
        log.info("index %s: training on %d vectors (%d held)", factory, sample.shape[0], n)
        try:
            target.index.train(sample)
            target.add(ids, vectors)
        except Exception:
            log.exception("index %s: training failed", factory)
            target.clear()
            raise
        log.info(
            "index %s: trained and moved %d vectors into the index in %.2fs",
            factory, n, time.perf_counter() - t0,
        )
