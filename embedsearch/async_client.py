"""The asynchronous client: ``AsyncClient`` and its ``AsyncCollection`` handles, method for method the
synchronous ones of embedsearch/client.py (each awaitable; ``documents()`` an async iterator)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
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

__all__ = ["AsyncClient", "AsyncCollection", "LoopClients"]


class AsyncClient(_api.ClientBase[httpx.AsyncClient]):
    """An asyncio client of one embedsearch server: the settings, retries and methods of ``Client``, awaited."""

    _http_class = httpx.AsyncClient

    async def close(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def _call(self, call: _api.Call[T]) -> T:
        for attempt in range(self._retries.max_retries + 1):
            try:
                response = await self._http.request(call.method, call.path, json=call.json, params=call.params)
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
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    # -- embeddings and models --------------------------------------------------------------------
    async def embed(self, input: str | Sequence[str], *, model: str, dimensions: int | None = None,
                    truncate: bool | None = None, progress: bool | None = None) -> np.ndarray:
        """Embeddings of ``input`` as a float32 array, one row per text (a single string gives one row).
        Any number of texts: they go in batches the server takes."""
        texts = [input] if isinstance(input, str) else input
        batches = _api.Batches(texts, _api.MAX_INPUTS)
        rows: list[np.ndarray] = []
        with _api.progress(texts, "embed", progress, _api.MAX_INPUTS) as bar:
            for batch in batches:
                try:
                    rows.append(await self._call(_api.embed(batch, model, dimensions, truncate)))
                except APIStatusError as exc:
                    batches.split(batch, exc)
                    continue
                bar.update(len(batch))
        return np.concatenate(rows) if rows else np.empty((0, dimensions or 0), np.float32)

    async def list_models(self) -> list[Model]:
        return await self._call(_api.list_models())

    async def get_model(self, model_id: str) -> Model:
        return await self._call(_api.get_model(model_id))

    # -- collections ------------------------------------------------------------------------------
    def collection(self, name: str) -> AsyncCollection:
        """A handle on the collection ``name`` (no request is made: a missing one fails at first use)."""
        return AsyncCollection(self, name)

    async def create_collection(self, name: str, *, model: str | None = None, dimension: int | None = None,
                                metric: Metric = "cosine", index: str = "Flat") -> AsyncCollection:
        """A new collection. With ``model``, documents and queries may be text (embedded by the server);
        without, ``dimension`` is required and only vectors are taken. ``index`` is a FAISS factory string."""
        await self._call(_api.create_collection(name, model, dimension, metric, index))
        return AsyncCollection(self, name)

    async def get_collection(self, name: str) -> AsyncCollection:
        """A handle on an existing collection (NotFoundError if there is none)."""
        await self._call(_api.get_collection(name))
        return AsyncCollection(self, name)

    async def list_collections(self) -> list[CollectionInfo]:
        """Every collection of the key's tenant, by name (fetched a page at a time)."""
        infos, cursor = await self._call(_api.list_collections(None))
        while cursor is not None:
            more, cursor = await self._call(_api.list_collections(cursor))
            infos += more
        return infos

    async def delete_collection(self, name: str) -> None:
        await self._call(_api.delete_collection(name))

    # -- keys (admin keys only) and operations ------------------------------------------------------
    async def create_key(self, tenant: str) -> ApiKey:
        return await self._call(_api.create_key(tenant))

    async def list_keys(self) -> list[ApiKey]:
        return await self._call(_api.list_keys())

    async def revoke_key(self, key_id: int) -> None:
        await self._call(_api.revoke_key(key_id))

    async def health(self) -> dict[str, Any]:
        return await self._call(_api.health())

    async def ready(self) -> dict[str, Any]:
        """The server's readiness report (``status`` is ``ready`` or ``not_ready``; never raised as an error)."""
        return await self._call(_api.ready())

    async def metrics(self) -> str:
        return await self._call(_api.metrics())


class AsyncCollection:
    """One collection's documents and searches."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"AsyncCollection({self.name!r})"

    async def info(self) -> CollectionInfo:
        return await self.client._call(_api.get_collection(self.name))

    async def count(self) -> int:
        return (await self.info()).count

    async def upsert(self, documents: Iterable[DocumentLike], *, batch_size: int = _api.MAX_DOCUMENTS,
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
                    await self.client._call(_api.upsert(self.name, batch))
                except APIStatusError as exc:
                    batches.split(batch, exc)
                    continue
                ids += [d["id"] for d in batch]
                bar.update(len(batch))
        return ids

    async def get(self, id: str, *, include_vector: bool = False) -> Document:
        """One document (NotFoundError if there is none)."""
        return await self.client._call(_api.get_document(self.name, id, include_vector))

    async def get_many(self, ids: Sequence[str], *, include_vector: bool = False) -> list[Document]:
        """The documents with these ids, in their order; ids with no document are left out."""
        found: list[Document] = []
        for i in range(0, len(ids), _api.MAX_GET_IDS):
            found += await self.client._call(_api.get_documents(self.name, list(ids[i:i + _api.MAX_GET_IDS]),
                                                          include_vector))
        return found

    async def page(self, *, limit: int = 100, cursor: str | None = None, filter: Filter | None = None) -> Page:
        """One page of documents in id order (``next_cursor`` gives the next)."""
        return await self.client._call(_api.page(self.name, limit, cursor, filter))

    async def documents(self, *, filter: Filter | None = None, page_size: int = 100) -> AsyncIterator[Document]:
        """Every document (matching ``filter``), in id order, fetched a page at a time."""
        cursor = None
        while True:
            page = await self.page(limit=page_size, cursor=cursor, filter=filter)
            for doc in page.documents:
                yield doc
            if not page.has_more:
                return
            cursor = page.next_cursor

    async def delete(self, ids: Sequence[str] | None = None, *, filter: Filter | None = None) -> int:
        """Delete the documents with these ids, or matching ``filter``, or both (ids that also match);
        ``filter={}`` deletes all. How many were deleted (ids with no document are not counted)."""
        if ids is None:
            return await self.client._call(_api.delete_documents(self.name, None, filter))
        return sum([await self.client._call(_api.delete_documents(self.name, list(ids[i:i + _api.MAX_DELETE_IDS]),
                                                                  filter))
                    for i in range(0, len(ids), _api.MAX_DELETE_IDS)])

    async def delete_one(self, id: str) -> None:
        """Delete one document (NotFoundError if there is none)."""
        await self.client._call(_api.delete_document(self.name, id))

    async def search(self, query: str | None = None, *, vector: VectorLike | None = None, top_k: int = 10,
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
        return (await self.client._call(call))[0]

    async def search_batch(self, queries: Sequence[str] | None = None, *,
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
                for hits in await self.client._call(_api.search(self.name, field, batch, top_k, filter, include,
                                                                    min_score, options))]


class LoopClients:
    """The AsyncClient for the running event loop, for code that lives longer than one loop (the framework
    vector stores): the one given, else one made for each loop from ``base_url`` and ``api_key`` (an httpx
    async client cannot outlive its loop)."""

    def __init__(self, base_url: str, api_key: str, given: AsyncClient | None = None) -> None:
        self.base_url, self.api_key = base_url, api_key
        self._client = given
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the client was made for; None: given

    def get(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or (self._loop is not None and self._loop is not loop):
            self._client = AsyncClient(self.base_url, self.api_key)
            self._loop = loop
        return self._client
