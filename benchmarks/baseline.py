"""In-process baselines of the vector side: FAISS ``add``/``search`` plus a bulk SQL insert.

A :class:`BaselineCollection` is what the service does for an upsert with everything but the service
taken away: the same FAISS index type and parameters (HNSW efConstruction/efSearch, IVF nprobe as the
service sets them), and a bulk ``executemany`` into an SQLite table shaped like the service's, with
the same durability settings (WAL, ``synchronous=FULL``, one transaction per batch).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

import faiss
import numpy as np

# The service's defaults, so that the baseline index is configured like the service's.
from index import DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, MIN_POINTS_PER_CENTROID, default_nprobe


def ivf_factory(n: int) -> str:
    """An IVF index sized for ``n`` vectors: about 4*sqrt(n) lists (a power of two) it can train on."""
    nlist = 1
    while nlist * 2 <= 4 * math.sqrt(n) and nlist * 2 * MIN_POINTS_PER_CENTROID <= n:
        nlist *= 2
    return f"IVF{nlist},Flat"


def index_params(factory: str) -> dict:
    """The search parameters the service uses for ``factory`` by default."""
    if factory.startswith("HNSW"):
        return {"efSearch": DEFAULT_EF_SEARCH, "efConstruction": DEFAULT_EF_CONSTRUCTION}
    if factory.startswith("IVF"):
        nlist = int(factory[3:].split(",")[0])
        return {"nlist": nlist, "nprobe": default_nprobe(nlist)}
    return {}


class BaselineCollection:
    def __init__(self, factory: str, dimension: int, db_path: Path) -> None:
        self.factory = factory
        self.dimension = dimension
        self.index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
        self.params = index_params(factory)
        if factory.startswith("HNSW"):
            self.index.hnsw.efConstruction = self.params["efConstruction"]
            self.index.hnsw.efSearch = self.params["efSearch"]
        if factory.startswith("IVF"):
            faiss.extract_index_ivf(self.index).nprobe = self.params["nprobe"]
        self.min_train = self.params["nlist"] * MIN_POINTS_PER_CENTROID if "nlist" in self.params else 0
        self._pending: list[np.ndarray] = []  # vectors held until an IVF index can be trained
        self.count = 0
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS documents (collection_id INTEGER NOT NULL, id VARCHAR(256) NOT NULL, "
            "seq BIGINT NOT NULL, text TEXT, meta JSON NOT NULL, vector BLOB NOT NULL, "
            "PRIMARY KEY (collection_id, id), UNIQUE (collection_id, seq))"
        )
        self.db_path = db_path
        self.collection_id = 1

    def upsert(self, ids: list[str], vectors: np.ndarray, metadata: list[dict], texts: list[str] | None = None) -> float:
        """Insert one batch (SQL commit, then FAISS add); returns the seconds it took."""
        started = time.perf_counter()
        first = self.count
        rows = [
            (self.collection_id, doc_id, first + i, texts[i] if texts else None, json.dumps(meta),
             np.ascontiguousarray(vec, dtype="<f4").tobytes())
            for i, (doc_id, vec, meta) in enumerate(zip(ids, vectors, metadata))
        ]
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", rows)
        self.db.execute("COMMIT")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.index.is_trained:
            self.index.add(vectors)
        else:  # like the service: collect until there are enough vectors to train on, then train
            self._pending.append(vectors)
            if sum(len(p) for p in self._pending) >= self.min_train:
                held = np.concatenate(self._pending)
                self._pending = []
                self.index.train(held)
                self.index.add(held)
        self.count += len(ids)
        return time.perf_counter() - started

    def search(self, queries: np.ndarray, k: int, sel=None, ef_search: int | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of ``queries`` (positions are ids); ``sel`` (see :func:`selector`) restricts it."""
        if self.factory.startswith("HNSW"):
            params = faiss.SearchParametersHNSW(efSearch=ef_search or self.params["efSearch"])
        elif self.factory.startswith("IVF"):
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.params["nprobe"])
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)

    def close(self) -> None:
        """Forget the index and delete the SQLite file (and its WAL)."""
        self.db.close()
        self.index = None
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.db_path) + suffix).unlink(missing_ok=True)


def selector(allowed: np.ndarray):
    """A FAISS ID selector for the positions ``allowed`` (build it once; keep a reference while searching)."""
    return faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
