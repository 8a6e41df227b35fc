"""The synchronous client: ``Client`` and its ``Collection`` handles (embedsearch/async_client.py mirrors it)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
import numpy as np

from embedsearch import _api
from embedsearch.errors import APIStatusError, from_response
from embedsearch.types import (
    ApiKey,
    CollectionInfo,
    Document,
    DocumentLike,
    Filter,
    Hit,
    Include,
    Metric,
    Mode,
    Model,
    Page,
    VectorLike,
)

T = TypeVar("T")

__all__ = ["Client", "Collection"]


class Client(_api.ClientBase[httpx.Client]):
    """A client of one embedsearch server (``AsyncClient``: the same, awaited).

    ``base_url`` defaults to ``$EMBEDSEARCH_BASE_URL`` (else ``http://localhost:8000/v1``), ``api_key`` to
    ``$EMBEDSEARCH_API_KEY``, as the ``openai`` client reads its own. Requests answered 429 or 503, and
    requests that never reached the server, are retried ``max_retries`` times, waiting as Retry-After
    says (else backing off exponentially). Every other error status raises its ``APIStatusError``.
    ``http_client``: an httpx client of your own (proxies, transports, event hooks); it is not closed.
    """

    _http_class = httpx.Client

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _call(self, call: _api.Call[T]) -> T:
        for attempt in range(self._retries.max_retries + 1):
            try:
                response = self._http.request(call.method, call.path, json=call.json, params=call.params)
            except httpx.TransportError as exc:
                wait = self._retries.after_error(attempt, exc)
                if wait is None:
                    raise _api.connection_error(call, exc) from exc
            else:
                if response.is_success or call.any_status:
                    return _api.read(call, response)
                wait = self._retries.after_status(attempt, response)
                if wait is None:
                    raise from_response(response)
            time.sleep(wait)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    # -- embeddings and models --------------------------------------------------------------------
    def embed(self, input: str | Sequence[str], *, model: str, dimensions: int | None = None,
              truncate: bool | None = None, progress: bool | None = None) -> np.ndarray:
        """Embeddings of ``input`` as a float32 array, one row per text (a single string gives one row).
        Any number of texts: they go in batches the server takes."""
        texts = [input] if isinstance(input, str) else input
        batches = _api.Batches(texts, _api.MAX_INPUTS)
        rows: list[np.ndarray] = []
        with _api.progress(texts, "embed", progress, _api.MAX_INPUTS) as bar:
            for batch in batches:
                try:
                    rows.append(self._call(_api.embed(batch, model, dimensions, truncate)))
                except APIStatusError as exc:
                    batches.split(batch, exc)
                    continue
                bar.update(len(batch))
        return np.concatenate(rows) if rows else np.empty((0, dimensions or 0), np.float32)

    def list_models(self) -> list[Model]:
        return self._call(_api.list_models())

    def get_model(self, model_id: str) -> Model:
        return self._call(_api.get_model(model_id))

    # -- collections ------------------------------------------------------------------------------
    def collection(self, name: str) -> Collection:
        """A handle on the collection ``name`` (no request is made: a missing one fails at first use)."""
        return Collection(self, name)

    def create_collection(self, name: str, *, model: str | None = None, dimension: int | None = None,
                          metric: Metric = "cosine", index: str = "Flat") -> Collection:
        """A new collection. With ``model``, documents and queries may be text (embedded by the server);
        without, ``dimension`` is required and only vectors are taken. ``index`` is a FAISS factory string."""
        self._call(_api.create_collection(name, model, dimension, metric, index))
        return Collection(self, name)

    def get_collection(self, name: str) -> Collection:
        """A handle on an existing collection (NotFoundError if there is none)."""
        self._call(_api.get_collection(name))
        return Collection(self, name)

    def list_collections(self) -> list[CollectionInfo]:
        """Every collection of the key's tenant, by name (fetched a page at a time)."""
        infos, cursor = self._call(_api.list_collections(None))
        while cursor is not None:
            more, cursor = self._call(_api.list_collections(cursor))
            infos += more
        return infos

    def delete_collection(self, name: str) -> None:
        self._call(_api.delete_collection(name))

    # -- keys (admin keys only) and operations ------------------------------------------------------
    def create_key(self, tenant: str) -> ApiKey:
        return self._call(_api.create_key(tenant))

    def list_keys(self) -> list[ApiKey]:
        return self._call(_api.list_keys())

    def revoke_key(self, key_id: int) -> None:
        self._call(_api.revoke_key(key_id))

    def health(self) -> dict[str, Any]:
        return self._call(_api.health())

    def ready(self) -> dict[str, Any]:
        """The server's readiness report (``status`` is ``ready`` or ``not_ready``; never raised as an error)."""
        return self._call(_api.ready())

    def metrics(self) -> str:
        return self._call(_api.metrics())


class Collection:
    """One collection's documents and searches."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"Collection({self.name!r})"

    def info(self) -> CollectionInfo:
        return self.client._call(_api.get_collection(self.name))

    def count(self) -> int:
        return self.info().count

    def upsert(self, documents: Iterable[DocumentLike], *, batch_size: int = _api.MAX_DOCUMENTS,
               progress: bool | None = None) -> list[str]:
        """Insert or replace documents (``Document``s or dicts with id, text, metadata, vector): their ids,
        in order. Any number: they go in batches the server takes, each all or nothing, with a progress
        bar (by default on a terminal, for more than one batch)."""
        limit = min(batch_size, _api.MAX_DOCUMENTS)
        batches = _api.Batches((_api.document_in(d) for d in documents), limit)
        ids: list[str] = []
        with _api.progress(documents, f"upsert {self.name}", progress, limit) as bar:
            for batch in batches:
                try:
                    self.client._call(_api.upsert(self.name, batch))
                except APIStatusError as exc:
                    batches.split(batch, exc)
                    continue
                ids += [d["id"] for d in batch]
                bar.update(len(batch))
        return ids

    def get(self, id: str, *, include_vector: bool = False) -> Document:
        """One document (NotFoundError if there is none)."""
        return self.client._call(_api.get_document(self.name, id, include_vector))

    def get_many(self, ids: Sequence[str], *, include_vector: bool = False) -> list[Document]:
        """The documents with these ids, in their order; ids with no document are left out."""
        found: list[Document] = []
        for i in range(0, len(ids), _api.MAX_GET_IDS):
            found += self.client._call(_api.get_documents(self.name, list(ids[i:i + _api.MAX_GET_IDS]),
                                                          include_vector))
        return found

    def page(self, *, limit: int = 100, cursor: str | None = None, filter: Filter | None = None) -> Page:
        """One page of documents in id order (``next_cursor`` gives the next)."""
        return self.client._call(_api.page(self.name, limit, cursor, filter))

    def documents(self, *, filter: Filter | None = None, page_size: int = 100) -> Iterator[Document]:
        """Every document (matching ``filter``), in id order, fetched a page at a time."""
        cursor = None
        while True:
            page = self.page(limit=page_size, cursor=cursor, filter=filter)
            yield from page.documents
            if not page.has_more:
                return
            cursor = page.next_cursor

    def delete(self, ids: Sequence[str] | None = None, *, filter: Filter | None = None) -> int:
        """Delete the documents with these ids, or matching ``filter``, or both (ids that also match);
        ``filter={}`` deletes all. How many were deleted (ids with no document are not counted)."""
        if ids is None:
            return self.client._call(_api.delete_documents(self.name, None, filter))
        return sum(self.client._call(_api.delete_documents(self.name, list(ids[i:i + _api.MAX_DELETE_IDS]), filter))
                   for i in range(0, len(ids), _api.MAX_DELETE_IDS))

    def delete_one(self, id: str) -> None:
        """Delete one document (NotFoundError if there is none)."""
        self.client._call(_api.delete_document(self.name, id))

    def search(self, query: str | None = None, *, vector: VectorLike | None = None, top_k: int = 10,
               filter: Filter | None = None, include: Iterable[Include] = ("text", "metadata"),
               min_score: float | None = None, mode: Mode = "dense", keyword: str | None = None,
               fusion: Mapping[str, Any] | None = None, explain: bool = False) -> list[Hit]:
        """The ``top_k`` documents nearest a text ``query`` or a ``vector``, best first, among those matching
        ``filter``. ``min_score`` keeps hits scoring at least it (cosine, dot) or at most it away (l2).
        ``mode="keyword"`` searches the texts by BM25 (``keyword``, else ``query``); ``mode="hybrid"`` both,
        fused as ``fusion`` says (``{"method": "rrf", "k": 60}``, ``{"method": "weighted", "alpha": 0.5}``);
        ``explain=True`` gives each hit's rank and score in each branch (``Hit.explain``)."""
        field, value = _api.one_query(query, vector)
        options = _api.modes(mode, keyword, fusion, explain)
        call = _api.search(self.name, field, value, top_k, filter, include, min_score, options)
        return self.client._call(call)[0]

    def search_batch(self, queries: Sequence[str] | None = None, *,
                     vectors: np.ndarray | Sequence[VectorLike] | None = None, top_k: int = 10,
                     filter: Filter | None = None, include: Iterable[Include] = ("text", "metadata"),
                     min_score: float | None = None, mode: Mode = "dense",
                     fusion: Mapping[str, Any] | None = None, explain: bool = False) -> list[list[Hit]]:
        """One list of hits per query (texts) or vector, in order; any number, in as many searches as needed.
        ``mode``, ``fusion`` and ``explain`` as in ``search`` (in keyword and hybrid modes each text is its
        own keyword query)."""
        field, batches = _api.query_batches(queries, vectors, top_k)
        options = _api.modes(mode, None, fusion, explain)
        return [hits for batch in batches
                for hits in self.client._call(_api.search(self.name, field, batch, top_k, filter, include,
                                                              min_score, options))]
