"""MilvusIndex: one collection's vectors, metadata and texts in one Milvus collection (the second backend).

What VectorIndex (vector_index.py) does in memory with FAISS, this does on a Milvus cluster, or on
milvus-lite in-process: the caller's int64 ids (write-log positions) are the INT64 primary key, the
vectors a FLOAT_VECTOR field indexed as the factory string says, the metadata a JSON field for filter
expressions, and the text a VARCHAR field that Milvus's BM25 function turns into a sparse vector for
keyword search. Every read is Strong-consistent: a write Milvus acknowledged is in the next search, on
any client of that Milvus (a server's default, Bounded, could miss it for a few seconds). Every call
has a deadline.

Scores are ours: cosine similarity and inner product as Milvus gives them, Euclidean distance as the
square root of Milvus's squared L2; ties are ordered by id (as VectorIndex orders them) among a few
more hits than asked for. Knows no SQL or HTTP; thread-safe (one gRPC channel), the caller orders
writes.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .exact import missing_score
from .tuning import Tuning
from .validation import check_dimension, check_factory, check_metric

log = logging.getLogger("index")

# Milvus's names of our metrics; its L2 is squared.
_METRICS = {"cosine": "COSINE", "dot": "IP", "l2": "L2"}
MAX_TEXT_BYTES = 65_535  # a Milvus VARCHAR's limit: keyword search reads the first 64 KiB of a longer text
MAX_LIMIT = 16_384  # Milvus's largest top-k
TIE_MARGIN = 16  # hits asked for beyond k, so that ties at the k-th place are broken by id
# Lucene's English stop words (as index/keywords.py drops them), for Milvus's BM25 analyzer.
STOP_WORDS = ["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
              "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they",
              "this", "to", "was", "will", "with"]
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase", {"type": "stop", "stop_words": STOP_WORDS}]}


@dataclass(frozen=True)
class MilvusType:
    """A factory string as a Milvus index: its type and build parameters."""

    index_type: str
    params: dict[str, int]

    def search_params(self, k: int, tuning: Tuning) -> dict[str, int]:
        if self.index_type == "HNSW":
            return {"ef": max(k, tuning.ef_search)}
        if self.index_type.startswith("IVF"):
            return {"nprobe": tuning.nprobe_for(self.params["nlist"])}
        return {}


_SUPPORTED = (
    (re.compile(r"Flat"), lambda m, t: MilvusType("FLAT", {})),
    (re.compile(r"HNSW(\d+)(?:,Flat)?"), lambda m, t: MilvusType(
        "HNSW", {"M": int(m[1]), "efConstruction": t.ef_construction})),
    (re.compile(r"IVF(\d+),Flat"), lambda m, t: MilvusType("IVF_FLAT", {"nlist": int(m[1])})),
    (re.compile(r"IVF(\d+),SQ8"), lambda m, t: MilvusType("IVF_SQ8", {"nlist": int(m[1])})),
    (re.compile(r"IVF(\d+),PQ(\d+)(?:x(\d+))?"), lambda m, t: MilvusType(
        "IVF_PQ", {"nlist": int(m[1]), "m": int(m[2]), "nbits": int(m[3] or 8)})),
)


def milvus_type(factory: str, dimension: int, tuning: Tuning) -> MilvusType:
    """The Milvus index for a factory string; ValueError (in words for a client) for one it has no match for."""
    check_factory(factory)
    for pattern, make in _SUPPORTED:
        match = pattern.fullmatch(factory)
        if match:
            kind = make(match, tuning)
            if kind.index_type == "IVF_PQ" and dimension % kind.params["m"]:
                raise ValueError(f"{factory!r}: PQ{kind.params['m']} needs a dimension divisible by "
                                 f"{kind.params['m']}, not {dimension}")
            return kind
    raise ValueError(f"{factory!r} has no Milvus equivalent on this server's vector backend (milvus); use "
                     "Flat, HNSW<M>, IVF<lists>,Flat, IVF<lists>,SQ8 or IVF<lists>,PQ<m>[x<bits>]")


def connect(uri: str, token: str, timeout: float) -> Any:
    """A client of the Milvus at ``uri``: a cluster's URL, or a path ending in .db for milvus-lite in-process."""
    from pymilvus import MilvusClient

    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
        # pymilvus logs every failed call, traceback and all, to a handler of its own; the caller reports them
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.CRITICAL)
    return MilvusClient(uri=uri, token=token, timeout=timeout)


def disconnect(client: Any, uri: str) -> None:
    """Close a client; for milvus-lite, also stop its in-process server (which holds the data dir's lock)."""
    client.close()
    if uri.endswith(".db"):
        from milvus_lite import server_manager_instance

        server_manager_instance.release_server(uri)


def is_released(exc: Exception) -> bool:
    """Whether a Milvus error says the collection is not loaded (Milvus restarted, say)."""
    return getattr(exc, "code", None) == 101 or "load()" in str(exc)


def is_missing_collection(exc: Exception) -> bool:
    """Whether a Milvus error says the collection does not exist (dropped by another server)."""
    return getattr(exc, "code", None) == 100 or "does not exist" in str(exc)


def _text(text: str | None) -> str:
    if not text:
        return ""
    raw = text.encode("utf-8")
    return text if len(raw) <= MAX_TEXT_BYTES else raw[:MAX_TEXT_BYTES].decode("utf-8", "ignore")


class MilvusIndex:
    """The Milvus collection ``name``: made by :meth:`create`, or found there (:meth:`exists`) and :meth:`load`-ed."""

    def __init__(self, client: Any, name: str, dimension: int, metric: str, factory: str, tuning: Tuning,
                 timeout: float) -> None:
        self.client = client
        self.name = name
        self.dimension = check_dimension(dimension)
        self.metric = check_metric(metric)
        self.factory = factory
        self.kind = milvus_type(factory, self.dimension, tuning)
        self.tuning = tuning
        self.timeout = timeout

    def exists(self) -> bool:
        return self.client.has_collection(self.name, timeout=self.timeout)

    def create(self) -> None:
        """Make the Milvus collection (schema and indexes); one that exists already is kept."""
        from pymilvus import DataType, Function, FunctionType

        if self.exists():
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("seq", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
        schema.add_field("meta", DataType.JSON)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, enable_analyzer=True,
                         analyzer_params=ANALYZER)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                     output_field_names=["sparse"]))
        indexes = self.client.prepare_index_params()
        indexes.add_index("vector", index_type=self.kind.index_type, metric_type=_METRICS[self.metric],
                          params=self.kind.params)
        indexes.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                          params={"bm25_k1": 1.2, "bm25_b": 0.75})
        try:  # the indexes are built in the background (waiting for them, pymilvus asks what milvus-lite lacks)
            self.client.create_collection(self.name, schema=schema, consistency_level="Strong", timeout=self.timeout)
            self.client.create_index(self.name, indexes, sync=False, timeout=self.timeout)
        except Exception:
            if not self.exists():  # made meanwhile by another server: that one is the same
                raise
        self.load()
        log.info("milvus collection %s: %s (%s), metric %s", self.name, self.factory, self.kind.index_type,
                 self.metric)

    def load(self) -> None:
        """Load the collection for searches (after a Milvus restart one is released)."""
        self.client.load_collection(self.name, timeout=self.timeout)

    def drop(self) -> None:
        self.client.drop_collection(self.name, timeout=self.timeout)

    # -- writes ---------------------------------------------------------------------------------
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, metas: list[dict], texts: list[str | None]) -> None:
        """Insert or replace rows by id: replaying a write that is in already changes nothing."""
        if len(ids) == 0:
            return
        rows = [{"seq": int(i), "vector": v, "meta": m, "text": _text(t)}
                for i, v, m, t in zip(ids.tolist(), np.asarray(vectors, np.float32), metas, texts)]
        for start in range(0, len(rows), 1000):  # a Milvus message is at most 64 MiB
            self.client.upsert(self.name, rows[start:start + 1000], timeout=self.timeout)

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids (unknown ones are ignored)."""
        ids = [int(i) for i in np.asarray(ids).tolist()]
        for start in range(0, len(ids), 10_000):
            self.client.delete(self.name, ids=ids[start:start + 10_000], timeout=self.timeout)

    # -- reads ----------------------------------------------------------------------------------
    def count(self) -> int:
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"], consistency_level="Strong",
                                 timeout=self.timeout)
        return int(rows[0]["count(*)"])

    def search(self, queries: np.ndarray, k: int, expression: str = "") -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` (scores, ids) of each query among the rows ``expression`` (a Milvus filter) admits,
        padded as VectorIndex.search pads (id -1)."""
        queries = np.asarray(queries, np.float32).reshape(-1, self.dimension)
        params = {"metric_type": _METRICS[self.metric], "params": self.kind.search_params(k, self.tuning)}
        return self._search(queries, "vector", k, expression, params, self.metric == "l2")

    def keyword_search(self, queries: list[str], k: int, expression: str = "") -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` (BM25 scores, ids) of each keyword query, by Milvus's BM25 function."""
        return self._search(queries, "sparse", k, expression, {"metric_type": "BM25"}, False)

    def _search(self, data: Any, field: str, k: int, expression: str, params: dict,
                lower_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
        nq = len(data)
        scores = np.full((nq, k), missing_score("l2" if lower_is_better else "dot"), np.float32)
        ids = np.full((nq, k), -1, np.int64)
        if nq == 0:
            return scores, ids
        limit = min(k + min(k, TIE_MARGIN), MAX_LIMIT)
        found = self.client.search(self.name, data=data if field == "sparse" else data.tolist(), anns_field=field,
                                   limit=limit, filter=expression, search_params=params, output_fields=[],
                                   consistency_level="Strong", timeout=self.timeout)
        for row, hits in enumerate(found):
            pairs = [(_score(hit["distance"], field, lower_is_better), hit["seq"]) for hit in hits]
            pairs.sort(key=lambda p: (p[0] if lower_is_better else -p[0], p[1]))
            for col, (score, seq) in enumerate(pairs[:k]):
                scores[row, col], ids[row, col] = score, seq
        return scores, ids


def _score(distance: float, field: str, l2: bool) -> float:
    if field == "sparse":
        return abs(distance)  # BM25 is never negative; milvus-lite reports it negated
    return math.sqrt(max(distance, 0.0)) if l2 else distance


__all__ = ["MilvusIndex", "MilvusType", "milvus_type", "connect", "disconnect", "is_missing_collection", "is_released"]
