"""Prometheus metrics in the text exposition format (version 0.0.4), with no client library.

:class:`Metrics` is a small registry made by the app factory and owned by the app. The request path
feeds it only the HTTP series (a dict update and a bisect per request, from
:class:`~service.observability.middleware.RequestObserver`); everything else is read at scrape time
from the engine's status (service/engine/engine.py ``status``), which it already keeps: each model's
batcher counters and queue, each collection's index size and filter cache counters. The event loop
is the only writer and reader of the registry's own series, so it needs no locks. With several HTTP
worker processes, each keeps its own HTTP series (a scrape reaches one of them: label them by
instance, or sum over scrapes); the engine's series are the whole server's.

Nothing here names a tenant or a collection: routes are templates (``/v1/collections/{name}/search``)
and collections are labelled by their numeric id, so ``/metrics`` can be served without a key.
"""

from __future__ import annotations

import itertools
import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.engine.protocol import EngineStatus, ModelState

CONTENT_TYPE = "text/plain; version=0.0.4"  # Litestar adds "; charset=utf-8"

LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

# Methods outside this set are counted as "OTHER", so a client cannot mint label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # the route label of requests that matched no route (404/405)


class Histogram:
    """A cumulative histogram; ``le`` semantics (a value equal to a bound falls in that bucket)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs, ending with ``+Inf`` (equal to ``count``)."""
        running = itertools.accumulate(self.counts)
        return [(_number(b), c) for b, c in zip((*self.bounds, math.inf), running)]


@dataclass
class _BatchSizes:
    """Batch sizes of one model, taken from its batcher's window of recent batch sizes at scrape time."""

    histogram: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    engine: float = 0.0  # when the engine whose batcher was read last started (a new one counts from zero)
    seen: int = 0  # the batcher's forward_passes when last read

    def update(self, engine: float, state: ModelState) -> None:
        if engine != self.engine:
            self.engine, self.seen = engine, 0
        new = state.forward_passes - self.seen
        if new <= 0:
            return
        recent = state.recent_batch_sizes
        # Passes older than the window (more than its length since the last scrape) are not bucketed.
        for size in recent[max(0, len(recent) - new):]:
            self.histogram.observe(size)
        self.seen = state.forward_passes


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.in_flight = 0
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], Histogram] = {}
        self._batch_sizes: dict[str, _BatchSizes] = {}

    # -- fed per request (hot path: keep it tiny) --------------------------------------------------
    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "OTHER"
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get((method, route))
        if histogram is None:
            histogram = self.latency[(method, route)] = Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    # -- scrape ------------------------------------------------------------------------------------
    def render(self, engine: EngineStatus | None = None) -> str:
        out = _Writer()
        out.family("embedsearch_start_time_seconds", "gauge", "Unix time the server started.")
        out.sample("embedsearch_start_time_seconds", {}, self.started)

        out.family("embedsearch_http_requests_in_flight", "gauge", "HTTP requests being served now.")
        out.sample("embedsearch_http_requests_in_flight", {}, self.in_flight)

        out.family("embedsearch_http_requests_total", "counter",
                   "HTTP requests by method, route template and status code.")
        for (method, route, status), count in sorted(self.requests.items()):
            out.sample("embedsearch_http_requests_total", {"method": method, "route": route, "status": status}, count)

        out.family("embedsearch_http_request_duration_seconds", "histogram",
                   "HTTP request latency (first byte received to last byte sent) by method and route template.")
        for (method, route), histogram in sorted(self.latency.items()):
            out.histogram("embedsearch_http_request_duration_seconds", {"method": method, "route": route}, histogram)

        if engine is not None:
            self._render_models(out, engine)
            indexes = engine.indexes
            out.family("embedsearch_collections", "gauge", "Collections, all tenants together.")
            out.sample("embedsearch_collections", {}, len(indexes))
            out.family("embedsearch_collection_vectors", "gauge",
                       "Vectors in each collection's FAISS index, by collection id.")
            for index in indexes:
                out.sample("embedsearch_collection_vectors", {"collection": index.collection}, index.vectors)
            out.family("embedsearch_index_snapshots_total", "counter",
                       "Index snapshots written (in the background) since the server started, by collection id.")
            for index in indexes:
                out.sample("embedsearch_index_snapshots_total", {"collection": index.collection}, index.snapshots)
            out.family("embedsearch_filter_cache_lookups_total", "counter",
                       "Filtered searches by how the collection's filter cache answered: hit (unchanged since "
                       "cached), update (only the writes since read from SQL), miss (evaluated in SQL).")
            for index in indexes:
                for result, count in (("hit", index.hits), ("update", index.updates), ("miss", index.misses)):
                    out.sample("embedsearch_filter_cache_lookups_total", {"collection": index.collection,
                                                                          "result": result}, count)
        return out.text()

    def _render_models(self, out: _Writer, engine: EngineStatus) -> None:
        models = sorted(engine.models.items())
        batchers = [(name, state) for name, state in models if state.status == "ready"]
        for name, state in batchers:
            self._batch_sizes.setdefault(name, _BatchSizes()).update(engine.started, state)

        out.family("embedsearch_model_ready", "gauge", "1 when the model is loaded and serving, else 0.")
        for name, state in models:
            out.sample("embedsearch_model_ready", {"model": name}, int(state.status == "ready"))

        counters = (
            ("embedsearch_encoder_forward_passes_total", "forward_passes", "Forward passes (batches) run."),
            ("embedsearch_encoder_sequences_total", "sequences", "Sequences (inputs) embedded."),
            ("embedsearch_encoder_tokens_total", "real_tokens", "Tokens embedded (without padding)."),
            ("embedsearch_encoder_padded_tokens_total", "padded_tokens", "Tokens run including padding."),
        )
        for metric, attribute, help_text in counters:
            out.family(metric, "counter", help_text)
            for name, state in batchers:
                out.sample(metric, {"model": name}, getattr(state, attribute))

        out.family("embedsearch_encoder_batch_size", "histogram", "Sequences per forward pass.")
        for name, _ in batchers:
            out.histogram("embedsearch_encoder_batch_size", {"model": name}, self._batch_sizes[name].histogram)

        out.family("embedsearch_encoder_queue_depth", "gauge", "Sequences waiting for the encoder.")
        for name, state in batchers:
            out.sample("embedsearch_encoder_queue_depth", {"model": name}, state.pending)
        out.family("embedsearch_encoder_queue_capacity", "gauge",
                   "Queued sequences past which requests are refused with 503.")
        for name, state in batchers:
            out.sample("embedsearch_encoder_queue_capacity", {"model": name}, state.capacity)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict[str, Any], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels.items())} {_number(value)}")

    def histogram(self, name: str, labels: dict[str, Any], histogram: Histogram) -> None:
        items = list(labels.items())
        for le, count in histogram.cumulative():
            self.lines.append(f"{name}_bucket{_labels([*items, ('le', le)])} {count}")
        self.lines.append(f"{name}_sum{_labels(items)} {_number(histogram.sum)}")
        self.lines.append(f"{name}_count{_labels(items)} {histogram.count}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _labels(items: Iterable[tuple[str, Any]]) -> str:
    body = ",".join(f'{key}="{_escape_label(str(value))}"' for key, value in items)
    return "{" + body + "}" if body else ""


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
