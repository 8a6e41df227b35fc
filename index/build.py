"""Bulk construction of a VectorIndex (start-up rebuild from the database), with a tqdm progress bar."""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
from tqdm import tqdm

from .tuning import Tuning
from .validation import check_ids, check_vectors
from .vector_index import VectorIndex

log = logging.getLogger("index")

DEFAULT_CHUNK_SIZE = 50_000


def build(
    dimension: int,
    metric: str,
    factory: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    progress: bool = True,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    train_sample_size: int | None = None,
    seed: int = 0,
    tuning: Tuning | None = None,
    use_gpu: bool | None = None,
) -> VectorIndex:
    """Build an index from in-memory (or memory-mapped) arrays, adding ``chunk_size`` rows at a time.

    An index that needs training is first trained on a random sample of ``vectors`` (default: up to
    4 x min_train_size, at least 65,536 rows when available) when enough rows exist, so the whole data
    set goes straight into the trained index. ``tuning`` and ``use_gpu`` go to :class:`VectorIndex`.
    """
    ids = check_ids(ids)
    n = ids.size
    if vectors is None or len(vectors) != n:
        raise ValueError(f"got {n} ids but {0 if vectors is None else len(vectors)} vectors")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    index = VectorIndex(dimension, metric, factory, tuning=tuning, use_gpu=use_gpu)
    stats = index.stats()
    if not stats["is_trained"] and n >= stats["min_train_size"]:
        size = min(n, train_sample_size or max(4 * stats["min_train_size"], 65_536))
        pick = np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if size < n else slice(None)
        index.train(check_vectors(vectors[pick], dimension))
    chunks = ((ids[a : a + chunk_size], vectors[a : a + chunk_size]) for a in range(0, n, chunk_size))
    return _fill(index, chunks, n, progress)


def build_from_chunks(
    dimension: int,
    metric: str,
    factory: str,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    total: int | None = None,
    progress: bool = True,
    tuning: Tuning | None = None,
    use_gpu: bool | None = None,
) -> VectorIndex:
    """Build from an iterable of (ids, vectors) chunks, e.g. pages of a database cursor.

    Indexes that need training train automatically once min_train_size vectors have arrived.
    """
    index = VectorIndex(dimension, metric, factory, tuning=tuning, use_gpu=use_gpu)
    return _fill(index, chunks, total, progress)


def _fill(index: VectorIndex, chunks, total: int | None, progress: bool) -> VectorIndex:
    with tqdm(total=total, unit="vec", desc=f"index {index.factory}", disable=not progress) as bar:
        for chunk_ids, chunk_vectors in chunks:
            index.upsert(chunk_ids, chunk_vectors)
            bar.update(len(chunk_ids))
    log.info("index %s: built with %d vectors", index.factory, len(index))
    return index
