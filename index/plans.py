"""Search plans: what a FAISS search of one keeper's index passes besides the queries.

A :class:`Plan` holds the nested ``SearchParameters`` (efSearch / nprobe, raised for k and boosted for
the share a selector keeps), the selector and the buffer it reads, the GPU clone that serves unfiltered
searches and the label -> id mapping. Building one downcasts the index through its wrappers and makes
SWIG objects, which took longer than FAISS's own search of a small index; an unfiltered plan depends
only on the index state and the knobs, so VectorIndex keeps those (:class:`Plans`) until the next write
or tuning change. Plans are only read by searches, so concurrent searches may share one.
"""

from __future__ import annotations

import math

from . import structure
from .exact import TIE_MARGIN

# When a selector keeps only a fraction s of the index, efSearch / nprobe are scaled by 1/sqrt(s)
# (at most this factor) so that filtered and tombstoned searches keep their recall.
MAX_FILTER_BOOST = 16.0
# Unfiltered plans kept for one index state, one per (k, ef_search, nprobe) searched with; a caller
# cycling through more of them makes the cache start over instead of growing.
MAX_PLANS = 64


class Plan:
    """How to search ``store``'s FAISS index for k results, restricted by ``selection`` = (selector,
    buffer it reads) of ``n_cand`` labels, or (None, None) for no restriction."""

    __slots__ = ("_index", "_params", "_keep", "_clone", "_nprobe", "_to_external")

    def __init__(self, store, tuning, k: int, selection, n_cand: int, ef_search: int | None, nprobe: int | None):
        sel, keep = selection
        layout = store.layout
        boost = 1.0
        if sel is not None:
            boost = min(MAX_FILTER_BOOST, 1.0 / math.sqrt(max(n_cand / max(int(store.index.ntotal), 1), 1e-12)))
        ef = nprobe_eff = None
        if layout.hnsw is not None:
            ef = int(math.ceil(max(ef_search or tuning.ef_search, k + TIE_MARGIN) * boost))
        if layout.ivf is not None:
            nlist = int(layout.ivf.nlist)
            nprobe_eff = min(int(math.ceil((nprobe or tuning.nprobe_for(nlist)) * boost)), nlist)
        self._index = store.index
        self._params = structure.search_params(store.index, sel, ef, nprobe_eff)
        self._keep = keep  # numpy buffer referenced by a bitmap selector; must outlive the searches
        self._clone = store.gpu if sel is None else None  # GPU indexes ignore selectors
        self._nprobe = nprobe_eff
        self._to_external = store.to_external

    def search(self, q, kf: int):
        """(distances, ids) of the kf nearest neighbours of each query; id -1 where there are fewer."""
        result = None if self._clone is None else self._clone.search(q, kf, self._nprobe)
        if result is None:
            result = self._index.search(q, kf, params=self._params)
        return result[0], self._to_external(result[1])


class Plans:
    """The unfiltered plans of one index state and one Tuning (a new Plans after any change)."""

    __slots__ = ("_plans",)

    def __init__(self):
        self._plans: dict[tuple, Plan] = {}

    def unfiltered(self, store, tuning, k: int, n_live: int, ef_search: int | None, nprobe: int | None) -> Plan:
        """The plan of an unfiltered search (with tombstones: of the live labels), made on first use.
        Concurrent searches may both make it; one is kept."""
        key = (k, ef_search, nprobe)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans = {}
            plan = self._plans[key] = Plan(store, tuning, k, store.live_selector(), n_live, ef_search, nprobe)
        return plan
