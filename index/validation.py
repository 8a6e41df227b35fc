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
    if type(k) is int and k >= 1:  # the common case, without the slower Integral check
        return k
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
    if arr.dtype != np.float32 and _not_numeric(arr.dtype):  # float32 first: every search passes here
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


def _not_numeric(dtype) -> bool:
    return dtype == np.bool_ or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))


def normalize_rows(x: np.ndarray, *, name: str = "vectors") -> np.ndarray:
    """L2-normalise the rows of a finite float32 array (returns a new array); zero rows cannot be normalised.

    The norms and quotients are computed in float64 and rounded once: float32 arithmetic gives other
    bits for nearly every row, and stored vectors and queries must keep the bits they always had. The
    steps are those of ``np.linalg.norm(axis=1)`` (same bits) without its dispatch, which cost more than
    the arithmetic for one query. Every quotient is finite and at most 1 in magnitude, since a row's
    float64 norm is never below its largest entry; the only rows that fail are the all-zero ones.
    """
    x64 = x.astype(np.float64)
    norms = np.sqrt(np.add.reduce(x64 * x64, axis=1))
    if not norms.all():
        zero = np.flatnonzero(norms == 0)
        raise ValueError(
            f"cosine metric: {name} rows {zero[:10].tolist()} have zero norm and cannot be normalised"
        )
    np.divide(x64, norms[:, None], out=x64)
    return x64.astype(np.float32)
