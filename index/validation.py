"""Input validation: every public entry point turns bad input into a ValueError with a clear message."""

from __future__ import annotations

import numbers
import os

import numpy as np

METRICS = ("cosine", "dot", "l2")


def check_dimension(dimension) -> int:
    if isinstance(dimension, bool) or not isinstance(dimension, numbers.Integral) or dimension <= 0:
        raise ValueError(f"dimension must be a positive integer, got {dimension!r}")
    return int(dimension)


def check_metric(metric) -> str:
    if not isinstance(metric, str) or metric.lower() not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    return metric.lower()


def check_factory(factory) -> str:
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(f"factory must be a non-empty FAISS index_factory string, got {factory!r}")
    factory = factory.strip()
    head = factory.split(",")[0].strip()
    if head.startswith("IDMap"):
        raise ValueError(
            f"factory {factory!r}: drop the {head!r} prefix; VectorIndex manages the id mapping itself"
        )
    return factory


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_position(position) -> int:
    if isinstance(position, bool) or not isinstance(position, numbers.Integral):
        raise ValueError(f"position must be an integer, got {position!r}")
    return int(position)


def check_path(path) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None


def check_ids(ids, *, name: str = "ids", allow_negative: bool = False) -> np.ndarray:
    """Return ids as a contiguous 1-D int64 array."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integers, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if not allow_negative and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative (got {int(arr.min())}); -1 is reserved for padding")
    return arr


def check_vectors(vectors, dimension: int, n: int | None = None, *, name: str = "vectors") -> np.ndarray:
    """Return vectors as a C-contiguous float32 [n, dimension] array of finite values.

    A single 1-D vector is accepted as one row.
    """
    arr = np.asarray(vectors)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1 and n in (None, 1):
        if arr.shape[0] != dimension:
            raise ValueError(f"{name} have dimension {arr.shape[0]}, index expects {dimension}")
        arr = arr.reshape(1, dimension)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape [n, {dimension}], got shape {arr.shape}")
    if arr.shape[1] != dimension:
        raise ValueError(f"{name} have dimension {arr.shape[1]}, index expects {dimension}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"got {n} ids but {arr.shape[0]} {name}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(
            f"{name} contain NaN or infinite values (rows {bad[:10].tolist()}{'...' if bad.size > 10 else ''})"
        )
    return arr


def normalize_rows(x: np.ndarray, *, name: str = "vectors") -> np.ndarray:
    """L2-normalise rows (returns a new array); zero rows cannot be normalised."""
    norms = np.linalg.norm(x.astype(np.float64, copy=False), axis=1)
    zero = np.flatnonzero(norms == 0) if x.shape[1] else np.arange(x.shape[0])
    if zero.size:
        raise ValueError(
            f"cosine metric: {name} rows {zero[:10].tolist()} have zero norm and cannot be normalised"
        )
    out = (x / norms[:, None]).astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"cosine metric: {name} could not be normalised (values out of float32 range)")
    return np.ascontiguousarray(out)
