"""What the suites share in one run: the profile, the server, the in-process model, data and collections."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import numpy as np
from tqdm import tqdm

from benchmarks import DEFAULT_INDEXES
from benchmarks.baseline import BaselineCollection
from benchmarks.data import VectorSet, clustered_vectors
from benchmarks.load import MAX_CLIENT_PROCESSES, check
from benchmarks.model import InProcessModel


@dataclass
class Profile:
    """How much of each workload to run (``--quick`` keeps the whole run under about 3 minutes)."""

    quick: bool
    lengths: list[str]  # embeddings: input lengths (keys of data.LENGTHS)
    concurrency: list[int]  # embeddings: concurrency levels
    min_requests: int  # embeddings: at least this many requests per case...
    rounds: int  # ...and at least `rounds` per concurrent worker...
    throughput_requests: int  # ...and at least this many in a throughput case (concurrency >= 16)
    baseline_seconds: float  # embeddings: time spent on each batch size of the in-process sweep
    baseline_max_batch: int  # embeddings: largest batch size of that sweep
    sizes: list[int]  # collection sizes (upsert uses the first, search all of them)
    batch100_docs: int  # upsert: documents written in batches of 100 (the rest in batches of 1000)
    text_batches: int  # upsert: batches of 100 texts (embedding included)
    text_tokens: int  # upsert: length of those texts
    indexes: list[str]  # search: FAISS factory strings ("IVF": sized for the collection)
    search_concurrency: list[int]
    search_requests: dict[int, int]  # concurrency -> requests
    search_queries: int  # distinct query vectors (recall is averaged over them)
    embed_seconds: float | None  # embeddings: stop sending new requests in a case after this long...
    search_seconds: float  # ...and in a search case (each concurrent worker still sends at least one)
    stall_size: int  # stall: vectors in the collection searched while snapshots run...
    stall_seconds: float  # ...for this long without writes, and as long with them
    front_requests: int  # front: requests per route
    workers_requests: int  # workers: requests per case
    client_processes: int  # front, workers, embeddings: the load generator's processes (at most)

    @classmethod
    def make(cls, quick: bool, sizes: list[int] | None, gpu: bool, indexes: tuple[str, ...] = DEFAULT_INDEXES,
             client_processes: int | None = None) -> "Profile":
        client_processes = client_processes or MAX_CLIENT_PROCESSES
        if quick:
            return cls(
                quick=True, lengths=["short"], concurrency=[1, 16], min_requests=6, rounds=2, throughput_requests=0,
                baseline_seconds=0.5, baseline_max_batch=64,
                sizes=sizes or [10_000], batch100_docs=1000, text_batches=1, text_tokens=32, indexes=list(indexes),
                search_concurrency=[1, 16], search_requests={1: 60, 16: 160}, search_queries=160,
                embed_seconds=10, search_seconds=4, stall_size=(sizes or [10_000])[0], stall_seconds=4,
                front_requests=1000, workers_requests=1000, client_processes=client_processes,
            )
        return cls(
            quick=False, lengths=["short", "medium", "long"], concurrency=[1, 4, 16, 64],
            # A throughput case on a GPU: 4,000 requests, all of them (no time limit), a few seconds to a
            # minute there. On a CPU the 270M model answers 1 to 50 inputs/s: 4,000 requests would take
            # from over a minute (short) to about an hour (long) per case, so there a case is `rounds`
            # requests per concurrent worker, cut at `embed_seconds`: four, so that the first round's
            # ramp-up and the last one's drain weigh less (with two, they were half of a case).
            min_requests=16, rounds=4, throughput_requests=4000 if gpu else 0,
            baseline_seconds=3.0 if gpu else 1.5, baseline_max_batch=256,
            sizes=sizes or [100_000, 1_000_000], batch100_docs=5000, text_batches=3, text_tokens=32,
            indexes=list(indexes),
            search_concurrency=[1, 16], search_requests={1: 200, 16: 800}, search_queries=800,
            embed_seconds=None if gpu else 30, search_seconds=20, stall_size=150_000, stall_seconds=30,
            front_requests=4000, workers_requests=4000, client_processes=client_processes,
        )


def collection_name(factory: str, n: int) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in factory).strip("-").lower()
    return f"bench-{slug}-{n}-{secrets.token_hex(3)}"


def wire_vector(vector: np.ndarray) -> str:
    """A vector as the service takes it best: base64 of little-endian float32 (JSON floats work too)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def upsert_body(vs: VectorSet, start: int, stop: int, *, binary: bool = True) -> bytes:
    docs = [{"id": str(i), "vector": wire_vector(vs.vectors[i]) if binary else vs.vectors[i].tolist(),
             "metadata": vs.metadata(i)} for i in range(start, stop)]
    return msgspec.json.encode({"documents": docs})


@dataclass
class LoadedCollection:
    """One index type at one size, loaded both into the service and into the in-process baseline."""

    factory: str
    size: int
    name: str  # the service's collection
    baseline: BaselineCollection
    # batch size -> (documents, seconds): service request round trips, and baseline SQL+FAISS time
    service_seconds: dict[int, list[float]] = field(default_factory=dict)
    baseline_seconds: dict[int, list[float]] = field(default_factory=dict)
    docs: dict[int, int] = field(default_factory=dict)


class Context:
    def __init__(self, *, target, profile: Profile, out_dir: Path, work_dir: Path, model_name: str,
                 models_file: str | None, models_dir: Path, device: str, dtype: str) -> None:
        self.target = target
        self.profile = profile
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.model_name = model_name
        self.models_file = models_file
        self.models_dir = models_dir
        self.device = device
        self.dtype = dtype
        self._model: InProcessModel | None = None
        self._vectors: VectorSet | None = None
        self._dimension: int | None = None
        self.collections: dict[tuple[str, int], LoadedCollection] = {}
        self.partial: dict | None = None  # the running suite's result so far (kept if the run is interrupted)
        self.http = httpx.Client(base_url=target.url, headers=target.headers, timeout=httpx.Timeout(900, connect=30))

    # -- the model ------------------------------------------------------------------------------
    def model(self) -> InProcessModel:
        if self._model is None:
            self._model = InProcessModel(self.model_name, self.models_file, self.models_dir, self.device, self.dtype)
        return self._model

    @property
    def dimension(self) -> int:
        """The served model's output size (asked of the server, so that --url works without a local model)."""
        if self._dimension is None:
            body = check(self.http.post("/v1/embeddings", json={"model": self.model_name, "input": "hello"}))
            self._dimension = len(body["data"][0]["embedding"])
        return self._dimension

    # -- vector data ----------------------------------------------------------------------------
    def vectors(self, n: int) -> VectorSet:
        """The first ``n`` vectors of one data set of the largest size any suite loads (the stall suite's
        may be above --sizes); smaller sizes are its prefixes."""
        biggest = max(*self.profile.sizes, self.profile.stall_size)
        if self._vectors is None:
            started = time.perf_counter()
            self._vectors = clustered_vectors(biggest, self.dimension, self.profile.search_queries, seed=1)
            tqdm.write(f"generated {biggest} clustered {self.dimension}-d vectors in {time.perf_counter() - started:.1f} s")
        vs = self._vectors
        return VectorSet(vectors=vs.vectors[:n], queries=vs.queries, buckets=vs.buckets[:n])

    # -- collections ----------------------------------------------------------------------------
    def create_collection(self, name: str, **fields) -> None:
        check(self.http.post("/v1/collections", json={"name": name, **fields}))

    def delete_collection(self, name: str) -> None:
        try:
            self.http.delete(f"/v1/collections/{name}")
        except httpx.HTTPError:
            pass

    def collection(self, factory: str, size: int, batch100_docs: int = 0) -> LoadedCollection:
        """Load ``size`` vectors into a new ``factory`` collection and into its baseline (once per run).

        Documents go in batches of 1000, except the last ``batch100_docs`` which go in batches of 100;
        every service request and every baseline batch is timed.
        """
        key = (factory, size)
        if key in self.collections:
            return self.collections[key]
        vs = self.vectors(size)
        name = collection_name(factory, size)
        self.create_collection(name, dimension=vs.dimension, metric="cosine", index=factory)
        loaded = LoadedCollection(factory, size, name,
                                  BaselineCollection(factory, vs.dimension, self.work_dir / f"{name}.db"))
        plan = [(start, min(start + 1000, size - batch100_docs), 1000) for start in range(0, size - batch100_docs, 1000)]
        plan += [(start, min(start + 100, size), 100) for start in range(size - batch100_docs, size, 100)]
        bar = tqdm(total=size, desc=f"upsert {factory} x{size}", unit="doc", unit_scale=True, leave=False,
                   dynamic_ncols=True)
        for start, stop, batch in plan:
            body = upsert_body(vs, start, stop)  # encoded before the clock starts: the client's cost is not the service's
            started = time.perf_counter()
            check(self.http.post(f"/v1/collections/{name}/documents", content=body,
                                 headers={"Content-Type": "application/json"}))
            loaded.service_seconds.setdefault(batch, []).append(time.perf_counter() - started)
            ids = [str(i) for i in range(start, stop)]
            meta = [vs.metadata(i) for i in range(start, stop)]
            loaded.baseline_seconds.setdefault(batch, []).append(loaded.baseline.upsert(ids, vs.vectors[start:stop], meta))
            loaded.docs[batch] = loaded.docs.get(batch, 0) + (stop - start)
            bar.update(stop - start)
        bar.close()
        info = check(self.http.get(f"/v1/collections/{name}"))
        if info["count"] != size or info["indexed"] != size:
            raise RuntimeError(f"collection {name}: count {info['count']}, indexed {info['indexed']}, expected {size}")
        self.collections[key] = loaded
        return loaded

    def drop_collection(self, loaded: LoadedCollection) -> None:
        self.delete_collection(loaded.name)
        loaded.baseline.close()
        self.collections.pop((loaded.factory, loaded.size), None)

    def close(self) -> None:
        for loaded in list(self.collections.values()):
            self.drop_collection(loaded)
        self.http.close()


def throughput(docs: int, seconds: list[float]) -> float:
    return docs / float(np.sum(seconds))
