"""A LangChain ``VectorStore`` over one embedsearch collection (``pip install 'embedsearch[langchain]'``).

    from embedsearch.langchain import EmbedsearchVectorStore
    store = EmbedsearchVectorStore("kb", model="gemma3:270m")  # texts and queries embedded by the server
    store.add_texts(["A recipe for bread"], metadatas=[{"topic": "food"}])
    store.as_retriever(search_kwargs={"k": 3, "filter": {"topic": "food"}}).invoke("how to bake")

A text collection (one made with a ``model``) needs no LangChain ``Embeddings``: the server embeds texts
and queries. Pass ``embedding=`` to embed on the client side instead, into a vector-only collection.
Filters are the server's (Mongo style: ``{"topic": "food"}``, ``{"year": {"$gte": 2020}}``, ``$and``, ...).
Keyword and hybrid search: ``similarity_search(query, mode="hybrid")`` (or ``"keyword"``; ``fusion=``,
``explain=`` as ``Collection.search`` takes them), also through ``as_retriever(search_kwargs=...)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Callable

import numpy as np

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError("embedsearch.langchain needs langchain-core: pip install 'embedsearch[langchain]'",
                              name=exc.name) from exc

from embedsearch.async_client import AsyncClient, AsyncCollection, LoopClients
from embedsearch.client import Client
from embedsearch.errors import NotFoundError
from embedsearch.types import Filter, Hit, Metric

__all__ = ["EmbedsearchVectorStore"]


class EmbedsearchVectorStore(VectorStore):
    """LangChain's vector store interface on the embedsearch collection ``collection_name``, made on first
    use if it does not exist: with ``model``, a text collection; else a vector collection of ``dimension``
    (by default that of ``embedding``'s vectors)."""

    def __init__(self, collection_name: str, *, embedding: Embeddings | None = None, model: str | None = None,
                 dimension: int | None = None, metric: Metric = "cosine", index: str = "Flat",
                 client: Client | None = None, async_client: AsyncClient | None = None,
                 base_url: str | None = None, api_key: str | None = None) -> None:
        self.client = client or Client(base_url, api_key)
        self._async_clients = LoopClients(self.client.base_url, self.client.api_key, async_client)
        self._embedding = embedding
        self.collection = self.client.collection(collection_name)
        try:
            info = self.collection.info()
        except NotFoundError:
            if model is None and dimension is None:
                if embedding is None:
                    raise ValueError(f"There is no collection `{collection_name}`: to make it, give model= (texts "
                                     "embedded by the server) or embedding= / dimension= (vectors).") from None
                dimension = len(embedding.embed_query("dimension"))
            self.client.create_collection(collection_name, model=model, dimension=dimension, metric=metric,
                                          index=index)
            info = self.collection.info()
        if info.model is None and embedding is None:
            raise ValueError(f"`{collection_name}` holds vectors only (it has no model): give embedding=.")
        self.metric: Metric = info.metric

    @property
    def embeddings(self) -> Embeddings | None:
        """The client-side ``Embeddings``, if given (else the server embeds)."""
        return self._embedding

    def _acollection(self) -> AsyncCollection:
        return self._async_clients.get().collection(self.collection.name)

    # -- writes ------------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Upsert texts (an existing id is replaced), in batches the server takes: their ids."""
        texts = list(texts)
        vectors = self._embedding.embed_documents(texts) if self._embedding else None
        return self.collection.upsert(_documents(texts, metadatas, ids, vectors), **kwargs)

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        vectors = await self._embedding.aembed_documents(texts) if self._embedding else None
        return await self._acollection().upsert(_documents(texts, metadatas, ids, vectors), **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete by ids, or by ``filter=``; neither deletes every document."""
        self.collection.delete(ids, filter=_delete_filter(ids, kwargs))
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        await self._acollection().delete(ids, filter=_delete_filter(ids, kwargs))
        return True

    # -- reads -------------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [_document(d.id, d.text, d.metadata) for d in self.collection.get_many(list(ids))]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [_document(d.id, d.text, d.metadata) for d in await self._acollection().get_many(list(ids))]

    def similarity_search(self, query: str, k: int = 4, filter: Filter | None = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(self, query: str, k: int = 4, filter: Filter | None = None,
                                 **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: Filter | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """Documents nearest ``query``, best first, with the server's scores (cosine: similarity; dot:
        inner product; l2: distance)."""
        if self._embedding:
            return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter,
                                                               **_keyword(query, kwargs))
        return _scored(self.collection.search(query, top_k=k, filter=filter, **kwargs))

    async def asimilarity_search_with_score(self, query: str, k: int = 4, filter: Filter | None = None,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        if self._embedding:
            vector = await self._embedding.aembed_query(query)
            return await self.asimilarity_search_with_score_by_vector(vector, k, filter, **_keyword(query, kwargs))
        return _scored(await self._acollection().search(query, top_k=k, filter=filter, **kwargs))

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: Filter | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: Filter | None = None,
                                           **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: Filter | None = None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        return _scored(self.collection.search(vector=embedding, top_k=k, filter=filter, **kwargs))

    async def asimilarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                                      filter: Filter | None = None,
                                                      **kwargs: Any) -> list[tuple[Document, float]]:
        return _scored(await self._acollection().search(vector=embedding, top_k=k, filter=filter, **kwargs))

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: Filter | None = None, **kwargs: Any) -> list[Document]:
        """``k`` documents among the ``fetch_k`` nearest ``query``, chosen for relevance and diversity
        (``lambda_mult``: 1 is relevance alone, 0 diversity alone)."""
        if self._embedding:
            vector = self._embedding.embed_query(query)
            return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter, **kwargs)
        hits = self.collection.search(query, top_k=fetch_k, filter=filter, include=_WITH_VECTORS, **kwargs)
        return _mmr(hits, k, lambda_mult, self.metric)

    async def amax_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20,
                                             lambda_mult: float = 0.5, filter: Filter | None = None,
                                             **kwargs: Any) -> list[Document]:
        if self._embedding:
            vector = await self._embedding.aembed_query(query)
            return await self.amax_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter,
                                                                       **kwargs)
        hits = await self._acollection().search(query, top_k=fetch_k, filter=filter, include=_WITH_VECTORS, **kwargs)
        return _mmr(hits, k, lambda_mult, self.metric)

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: Filter | None = None,
                                                **kwargs: Any) -> list[Document]:
        hits = self.collection.search(vector=embedding, top_k=fetch_k, filter=filter, include=_WITH_VECTORS, **kwargs)
        return _mmr(hits, k, lambda_mult, self.metric)

    async def amax_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                       lambda_mult: float = 0.5, filter: Filter | None = None,
                                                       **kwargs: Any) -> list[Document]:
        hits = await self._acollection().search(vector=embedding, top_k=fetch_k, filter=filter,
                                                include=_WITH_VECTORS, **kwargs)
        return _mmr(hits, k, lambda_mult, self.metric)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Scores as relevance in [0, 1]: cosine similarity and inner product as they are (unit vectors),
        an l2 distance between unit vectors as 1 - d / sqrt(2)."""
        return self._euclidean_relevance_score_fn if self.metric == "l2" else _same

    # -- constructors --------------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings | None = None,
                   metadatas: list[dict[str, Any]] | None = None, *, ids: list[str] | None = None,
                   collection_name: str = "langchain", **kwargs: Any) -> EmbedsearchVectorStore:
        store = cls(collection_name, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(cls, texts: list[str], embedding: Embeddings | None = None,
                          metadatas: list[dict[str, Any]] | None = None, *, ids: list[str] | None = None,
                          collection_name: str = "langchain", **kwargs: Any) -> EmbedsearchVectorStore:
        store = await asyncio.to_thread(cls, collection_name, embedding=embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store


_WITH_VECTORS = ("text", "metadata", "vector")


def _same(score: float) -> float:
    return score


def _documents(texts: list[str], metadatas: list[dict[str, Any]] | None, ids: list[str | None] | None,
               vectors: list[list[float]] | None) -> list[dict[str, Any]]:
    for what, given in (("metadatas", metadatas), ("ids", ids), ("embeddings", vectors)):
        if given is not None and len(given) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(given)} {what}")
    return [{"id": ids[i] if ids else None, "text": text, "metadata": metadatas[i] if metadatas else None,
             "vector": vectors[i] if vectors else None} for i, text in enumerate(texts)]


def _keyword(query: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Search options for a query embedded here: keyword and hybrid modes search its words as well."""
    if kwargs.get("mode", "dense") != "dense" and "keyword" not in kwargs:
        return {**kwargs, "keyword": query}
    return kwargs


def _delete_filter(ids: list[str] | None, kwargs: dict[str, Any]) -> Filter | None:
    filter = kwargs.get("filter")
    return {} if ids is None and filter is None else filter


def _document(doc_id: str, text: str | None, metadata: dict[str, Any] | None) -> Document:
    return Document(id=doc_id, page_content=text or "", metadata=metadata or {})


def _scored(hits: list[Hit]) -> list[tuple[Document, float]]:
    return [(_document(h.id, h.text, h.metadata), h.score) for h in hits]


def _mmr(hits: list[Hit], k: int, lambda_mult: float, metric: Metric) -> list[Document]:
    """Maximal marginal relevance over ``hits`` (fetched with their vectors): relevance is the server's
    score (negated for l2 distances), redundancy the cosine similarity to the documents already chosen."""
    if not hits:
        return []
    relevance = np.array([h.score for h in hits]) * (-1.0 if metric == "l2" else 1.0)
    vectors = np.stack([h.vector for h in hits])
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = vectors @ vectors.T
    chosen = [int(np.argmax(relevance))]
    while len(chosen) < min(k, len(hits)):
        redundancy = similarity[:, chosen].max(axis=1)
        gain = lambda_mult * relevance - (1 - lambda_mult) * redundancy
        gain[chosen] = -np.inf
        chosen.append(int(np.argmax(gain)))
    return [_document(hits[i].id, hits[i].text, hits[i].metadata) for i in chosen]
