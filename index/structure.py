"""Everything that depends on the *structure* of a FAISS index built from a factory string.

* :func:`create` builds the index (invalid or out-of-bounds strings -> ValueError, see factory.py),
* :func:`labels_are_ids` and :func:`removable` decide how ids and deletes are handled: FAISS labels are
  the caller's ids where the index removes natively (IVF, or Flat/PQ/SQ/... wrapped in ``IndexIDMap2``,
  see direct_ids.py), positions with tombstones elsewhere (HNSW, refine indexes, see tombstones.py),
* :func:`describe` finds the parts we tune (HNSW graph, IVF lists) and what searching can do (:class:`Layout`),
* :func:`min_training_size` says how many vectors the index needs before it can be trained,
* :func:`search_params` builds the nested ``SearchParameters`` object for an index,
* :func:`add_chunked` and :func:`reconstruct` move vectors in and out in bounded batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re

import faiss
import numpy as np

from . import factory as factory_bounds

log = logging.getLogger("index")

METRIC_TYPES = {"cosine": faiss.METRIC_INNER_PRODUCT, "dot": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}

# faiss.Clustering warns below 39 training points per centroid.
MIN_POINTS_PER_CENTROID = 39
# Training size used for index types that train something other than k-means (scalar quantizer ranges,
# LSH thresholds, ...).
DEFAULT_MIN_TRAIN = 1000


def faiss_message(exc: BaseException) -> str:
    """The useful part of a FAISS C++ exception message."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else text
    m = re.search(r" at \S+:\d+: (.*)$", last)
    msg = m.group(1) if m else last
    return msg.replace("Error: ", "", 1).strip()


def create(dimension: int, metric: str, factory: str) -> faiss.Index:
    """Build ``factory`` (invalid or out-of-bounds strings -> ValueError). Parameters are bounded first
    (index/factory.py): FAISS would allocate whatever they ask for, and its C++ error text (``stoi``,
    source paths) is no message for a caller, so it only goes to the debug log."""
    factory_bounds.check(factory, dimension)
    try:
        index = faiss.index_factory(dimension, factory, METRIC_TYPES[metric])
    except RuntimeError as exc:
        log.debug("faiss.index_factory(%d, %r) failed: %s", dimension, factory, exc)
        raise ValueError(factory_bounds.not_accepted(factory, dimension)) from None
    if index.metric_type != METRIC_TYPES[metric]:  # e.g. HNSW32_PQ16 and NSG32,PQ16 are built for L2 only
        raise ValueError(f"factory {factory!r}: FAISS builds this index type for the l2 metric only, not {metric}")
    # index_factory already returns the most derived (owning) wrapper; never downcast_index an owning
    # object and drop it: downcast_index returns a non-owning view of the same C++ object.
    disable_polysemous_training(index)
    return index


def disable_polysemous_training(index) -> None:
    """index_factory turns on polysemous training for PQ codecs (unless the string ends in "np").
    It only serves polysemous (Hamming-filtered) search, which is never used here, and makes PQ
    training several times slower, so it is switched off."""
    stack = [index]
    while stack:
        obj = _down(stack.pop())
        if obj is None:
            continue
        if hasattr(obj, "do_polysemous_training"):
            obj.do_polysemous_training = False
        for attr in ("index", "base_index", "storage"):
            sub = getattr(obj, attr, None)
            if isinstance(sub, faiss.Index):
                stack.append(sub)


def _down(index):
    return faiss.downcast_index(index) if index is not None else None


def unwrap(index) -> faiss.Index:
    """Strip IndexIDMap/IndexIDMap2 and IndexPreTransform wrappers."""
    index = _down(index)
    while True:
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            index = _down(index.index)
        elif isinstance(index, faiss.IndexPreTransform):
            index = _down(index.index)
        else:
            return index


def find_hnsw(index) -> faiss.IndexHNSW | None:
    inner = unwrap(index)
    if isinstance(inner, faiss.IndexRefine):
        inner = unwrap(inner.base_index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def find_ivf(index) -> faiss.IndexIVF | None:
    inner = unwrap(index)
    if isinstance(inner, faiss.IndexRefine):
        inner = unwrap(inner.base_index)
    return inner if isinstance(inner, faiss.IndexIVF) else None


def supports_selector(index) -> bool:
    """Whether ``index.search`` honours ``SearchParameters.sel`` (probed on faiss 1.15)."""
    inner = unwrap(index)
    if isinstance(inner, faiss.IndexRefine):
        return supports_selector(inner.base_index)
    return isinstance(inner, (faiss.IndexHNSW, faiss.IndexIVF, faiss.IndexFlat, faiss.IndexScalarQuantizer))


def removable(index) -> bool:
    """Whether ``index`` removes vectors natively (``remove_ids``)."""
    try:
        index.remove_ids(np.empty(0, dtype=np.int64))
    except RuntimeError:
        return False
    return True


def labels_are_ids(index) -> bool:
    """Whether ``index`` stores arbitrary int64 labels and removes them natively: an IndexIDMap2 wrapper,
    or an IVF index (optionally behind a pre-transform such as OPQ/PCA)."""
    top = _down(index)
    below_transform = _down(top.index) if isinstance(top, faiss.IndexPreTransform) else top
    return isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2)) or isinstance(below_transform, faiss.IndexIVF)


def wrap_ids(index) -> faiss.IndexIDMap2:
    """``index`` behind an owning IndexIDMap2, so that its labels can be the caller's ids."""
    wrapped = faiss.IndexIDMap2(index)
    wrapped.own_fields = True
    index.this.disown()
    return wrapped


def unsupported_reason(index) -> str | None:
    """Why VectorIndex cannot manage this index type, or None."""
    inner = unwrap(index)
    if isinstance(inner, faiss.IndexRefine):
        inner = unwrap(inner.base_index)
    if isinstance(inner, (faiss.IndexIVFFastScan, faiss.IndexFastScan)):
        # Block (fast-scan) inverted lists cannot remove through a direct map, and on faiss 1.15 a
        # deserialized IVF fast-scan index crashes in reconstruct(): no reliable deletes or reloads.
        return 'fast-scan ("...fs") indexes are not supported (no reliable removal/reconstruction in FAISS)'
    return None


@dataclasses.dataclass
class Layout:
    hnsw: faiss.IndexHNSW | None
    ivf: faiss.IndexIVF | None
    exact: bool  # searching the index is already exact (IndexFlat storage)
    selector: bool  # search honours IDSelector
    gpu_capable: bool


def describe(index) -> Layout:
    inner = unwrap(index)
    gpu_capable = labels_are_ids(index) and not isinstance(_down(index), faiss.IndexPreTransform)
    gpu_types = (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexIVFPQ, faiss.IndexIVFScalarQuantizer)
    gpu_capable = gpu_capable and isinstance(inner, gpu_types) and not isinstance(inner, faiss.IndexIVFFastScan)
    return Layout(
        hnsw=find_hnsw(index),
        ivf=find_ivf(index),
        exact=isinstance(inner, faiss.IndexFlat),
        selector=supports_selector(index),
        gpu_capable=gpu_capable,
    )


def _codec_min_train(obj) -> int:
    """Training size needed by the codec of an index / quantizer object (0 if none)."""
    need = 0
    pq = getattr(obj, "pq", None)
    if pq is not None and hasattr(pq, "ksub"):
        need = max(need, int(pq.ksub) * MIN_POINTS_PER_CENTROID)
    for attr in ("rq", "lsq", "prq", "plsq", "aq"):
        aq = getattr(obj, attr, None)
        if aq is not None and hasattr(aq, "nbits"):
            try:
                nbits = max(int(b) for b in faiss.vector_to_array(aq.nbits))
            except Exception:  # pragma: no cover - defensive
                nbits = 8
            need = max(need, (1 << nbits) * MIN_POINTS_PER_CENTROID)
    if isinstance(obj, (faiss.IndexScalarQuantizer, faiss.IndexIVFScalarQuantizer)):
        need = max(need, DEFAULT_MIN_TRAIN)
    return need


def min_training_size(index) -> int:
    """Number of vectors to collect before training ``index`` (0 if it needs no training)."""
    index = _down(index)
    if index is None:
        return 0
    if isinstance(index, faiss.IndexPreTransform):
        need = min_training_size(index.index)
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if vt.is_trained:
                continue
            if isinstance(vt, faiss.OPQMatrix):
                need = max(need, 256 * MIN_POINTS_PER_CENTROID)
            else:
                need = max(need, int(vt.d_in), DEFAULT_MIN_TRAIN)
        return need
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return min_training_size(index.index)
    if isinstance(index, faiss.IndexRefine):
        return max(min_training_size(index.base_index), min_training_size(index.refine_index))
    if isinstance(index, faiss.IndexHNSW):
        return min_training_size(index.storage)
    if index.is_trained:
        return 0
    if isinstance(index, faiss.IndexIVF):
        need = int(index.nlist) * MIN_POINTS_PER_CENTROID
        if not index.quantizer.is_trained:
            need = max(need, min_training_size(index.quantizer))
        return max(need, _codec_min_train(index))
    return _codec_min_train(index) or DEFAULT_MIN_TRAIN


def default_nprobe(nlist: int) -> int:
    """~sqrt(nlist), at least 8 lists (all lists for tiny nlist)."""
    return int(min(nlist, max(8, round(math.sqrt(nlist)))))


def search_params(index, sel=None, ef_search: int | None = None, nprobe: int | None = None):
    """Nested SearchParameters for ``index`` carrying ``sel``/efSearch/nprobe, or None if nothing to set."""
    index = _down(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        # IndexIDMap translates params.sel from external ids and forwards params to the sub-index.
        return search_params(index.index, sel, ef_search, nprobe)
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_params(index.index, sel, ef_search, nprobe)
        return None if inner is None else faiss.SearchParametersPreTransform(index_params=inner)
    if isinstance(index, faiss.IndexRefine):
        base = search_params(index.base_index, sel, ef_search, nprobe)
        if base is None:
            return None
        return faiss.IndexRefineSearchParameters(k_factor=float(index.k_factor), base_index_params=base)
    if isinstance(index, faiss.IndexHNSW):
        p = faiss.SearchParametersHNSW()
        if ef_search is not None:
            p.efSearch = int(ef_search)
        else:
            p.efSearch = int(index.hnsw.efSearch)
        if sel is not None:
            p.sel = sel
        return p
    if isinstance(index, faiss.IndexIVF):
        p = faiss.SearchParametersIVF()
        p.nprobe = int(nprobe if nprobe is not None else index.nprobe)
        if sel is not None:
            p.sel = sel
        return p
    if sel is None:
        return None
    return faiss.SearchParameters(sel=sel)


# Vectors go into FAISS this many at a time, which bounds the temporary copies FAISS makes while adding.
_ADD_CHUNK = 65536


def add_chunked(index, vectors: np.ndarray, labels: np.ndarray | None = None) -> None:
    """``index.add`` (positional labels) or ``index.add_with_ids`` of ``vectors``, in bounded batches."""
    for a in range(0, vectors.shape[0], _ADD_CHUNK):
        if labels is None:
            index.add(vectors[a : a + _ADD_CHUNK])
        else:
            index.add_with_ids(vectors[a : a + _ADD_CHUNK], labels[a : a + _ADD_CHUNK])


def reconstruct(index, labels: np.ndarray) -> np.ndarray:
    """Stored vectors of ``labels`` (float32 [n, d]; approximate for compressed codecs)."""
    if labels.size == 0:
        return np.empty((0, index.d), dtype=np.float32)
    return index.reconstruct_batch(np.ascontiguousarray(labels, dtype=np.int64))
