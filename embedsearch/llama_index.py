"""A LlamaIndex vector store over one embedsearch collection (``pip install 'embedsearch[llama-index]'``).

    from llama_index.core import StorageContext, VectorStoreIndex
    from embedsearch.llama_index import EmbedsearchVectorStore
    store = EmbedsearchVectorStore("kb", dimension=768)  # made if missing; or model=... for a text collection
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store))
    index.as_retriever(similarity_top_k=3).retrieve("how to bake")

Each node is one document: its id, its text, its embedding, and as metadata its own metadata (top level, so
``MetadataFilters`` apply to it) plus LlamaIndex's ``_node_content``, ``_node_type``, ``doc_id``,
``ref_doc_id`` and ``document_id``. ``MetadataFilters`` become the server's Mongo-style filters (``to_filter``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.schema import BaseNode, MetadataMode, TextNode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError("embedsearch.llama_index needs llama-index-core: "
                              "pip install 'embedsearch[llama-index]'", name=exc.name) from exc

from embedsearch._api import MAX_TOP_K
from embedsearch.async_client import AsyncClient, AsyncCollection, LoopClients
from embedsearch.client import Client, Collection
from embedsearch.errors import ConflictError, NotFoundError
from embedsearch.types import Document, Hit, Metric

__all__ = ["EmbedsearchVectorStore", "to_filter"]

_OPERATORS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt",
              FilterOperator.GTE: "$gte", FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte",
              FilterOperator.IN: "$in", FilterOperator.NIN: "$nin"}
_NOTHING: dict[str, Any] = {"$not": {}}  # a filter no document matches


class EmbedsearchVectorStore(BasePydanticVectorStore):
    """The embedsearch collection ``collection_name`` as a LlamaIndex vector store.

    Connects through ``client`` (and ``aclient`` for the async methods; else one is made per event loop),
    or to ``base_url`` with ``api_key`` (defaults: ``$EMBEDSEARCH_BASE_URL``, ``$EMBEDSEARCH_API_KEY``).
    With ``model`` (a text collection, the server embeds) or ``dimension`` (vectors only), the collection
    is made with ``metric`` and ``index`` if it does not exist. Queries are embedded by LlamaIndex; over a
    text collection, ``is_embedding_query=False`` has the server embed query strings instead (with the
    same model as the nodes' embeddings, e.g. LlamaIndex's ``OpenAILikeEmbedding`` on this server).
    Similarities are the server's scores: cosine similarity, inner product, or l2 distance (lower is better).
    """

    stores_text: bool = True
    flat_metadata: bool = False
    is_embedding_query: bool = True
    collection_name: str
    base_url: str | None = None
    api_key: str | None = Field(default=None, exclude=True, repr=False)
    model: str | None = None
    dimension: int | None = None
    metric: Metric = "cosine"
    index: str = "Flat"

    _client: Client = PrivateAttr()
    _aclients: LoopClients = PrivateAttr()

    def __init__(self, collection_name: str, *, client: Client | None = None, aclient: AsyncClient | None = None,
                 **fields: Any) -> None:
        super().__init__(collection_name=collection_name, **fields)
        self._client = client or Client(self.base_url, self.api_key)
        self._aclients = LoopClients(self._client.base_url, self._client.api_key, aclient)
        self.base_url = self._client.base_url
        if self.model is not None or self.dimension is not None:
            try:
                self._client.get_collection(collection_name)
            except NotFoundError:
                try:
                    self._client.create_collection(collection_name, model=self.model, dimension=self.dimension,
                                                   metric=self.metric, index=self.index)
                except ConflictError:  # made by someone else meanwhile
                    pass

    @classmethod
    def class_name(cls) -> str:
        return "EmbedsearchVectorStore"

    @property
    def client(self) -> Client:
        return self._client

    @property
    def aclient(self) -> AsyncClient:
        """The async client: the one given, or one made for the running event loop."""
        return self._aclients.get()

    @property
    def collection(self) -> Collection:
        return self._client.collection(self.collection_name)

    def _acollection(self) -> AsyncCollection:
        return self.aclient.collection(self.collection_name)

    # -- writes ------------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Upsert the nodes (a node's id replaces its older version), in batches the server takes: their ids."""
        return self.collection.upsert([to_document(n) for n in nodes])

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await self._acollection().upsert([to_document(n) for n in nodes])

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        self.collection.delete(filter={"ref_doc_id": ref_doc_id})

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await self._acollection().delete(filter={"ref_doc_id": ref_doc_id})

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        """Delete the nodes with these ids, or matching ``filters``, or both (ids that match); neither: none."""
        if node_ids is not None or filters is not None:
            self.collection.delete(node_ids, filter=to_filter(filters) if filters is not None else None)

    async def adelete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                            **delete_kwargs: Any) -> None:
        if node_ids is not None or filters is not None:
            await self._acollection().delete(node_ids, filter=to_filter(filters) if filters is not None else None)

    def clear(self) -> None:
        """Delete every node (the collection stays)."""
        self.collection.delete(filter={})

    async def aclear(self) -> None:
        await self._acollection().delete(filter={})

    # -- reads -------------------------------------------------------------------------------------
    def get_nodes(self, node_ids: list[str] | None = None,
                  filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The nodes with these ids (in their order), or matching ``filters`` (in id order), or both;
        neither: every node."""
        if filters is None and node_ids is not None:
            return _nodes(self.collection.get_many(node_ids), None)
        return _nodes(self.collection.documents(filter=_get_filter(filters)), node_ids)

    async def aget_nodes(self, node_ids: list[str] | None = None,
                         filters: MetadataFilters | None = None) -> list[BaseNode]:
        if filters is None and node_ids is not None:
            return _nodes(await self._acollection().get_many(node_ids), None)
        return _nodes([d async for d in self._acollection().documents(filter=_get_filter(filters))], node_ids)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes nearest the query's embedding (else, over a text collection, its
        ``query_str``) among those matching ``filters`` and ``doc_ids``; with ``node_ids``, those of them
        among the best MAX_TOP_K hits."""
        return query_result(self.collection.search(**search_args(query)), query)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return query_result(await self._acollection().search(**search_args(query)), query)


# -- conversions (shared by the sync and the async methods) -------------------------------------------


def to_document(node: BaseNode) -> dict[str, Any]:
    """A node as an embedsearch document: no vector where it has no embedding (a text collection's server
    embeds its text)."""
    doc: dict[str, Any] = {"id": node.node_id, "text": node.get_content(metadata_mode=MetadataMode.NONE),
                           "metadata": node_to_metadata_dict(node, remove_text=True, flat_metadata=False)}
    if node.embedding is not None:
        doc["vector"] = node.embedding
    return doc


def to_node(doc_id: str, text: str | None, metadata: dict[str, Any]) -> BaseNode:
    """A stored document as its node; a document written without LlamaIndex as a TextNode of it."""
    if "_node_content" not in metadata:
        return TextNode(id_=doc_id, text=text or "", metadata=metadata)
    return metadata_dict_to_node(metadata, text=text)


def _nodes(docs: Iterable[Document], node_ids: list[str] | None) -> list[BaseNode]:
    wanted = set(node_ids) if node_ids is not None else None
    return [to_node(d.id, d.text, d.metadata) for d in docs if wanted is None or d.id in wanted]


def _get_filter(filters: MetadataFilters | None) -> dict[str, Any] | None:
    return to_filter(filters) if filters is not None else None


_MODES = {VectorStoreQueryMode.DEFAULT: "dense", VectorStoreQueryMode.TEXT_SEARCH: "keyword",
          VectorStoreQueryMode.HYBRID: "hybrid"}


def search_args(query: VectorStoreQuery) -> dict[str, Any]:
    """The arguments of ``Collection.search`` for a LlamaIndex query. DEFAULT is dense search, TEXT_SEARCH
    the server's BM25 over ``query_str``, HYBRID both (``query_str`` the keyword query), fused by the
    weights of ``alpha`` when given (the dense share), else by RRF."""
    mode = _MODES.get(query.mode)
    if mode is None:
        raise ValueError(f"EmbedsearchVectorStore supports the default, text_search and hybrid query modes, not "
                         f"{query.mode.value!r}")
    parts = [to_filter(query.filters)] if query.filters is not None else []
    if query.doc_ids:
        parts.append(_compare("ref_doc_id", FilterOperator.IN, query.doc_ids))
    top_k = (query.hybrid_top_k or query.similarity_top_k) if mode == "hybrid" else query.similarity_top_k
    args: dict[str, Any] = {"top_k": MAX_TOP_K if query.node_ids else top_k,
                            "filter": _joined("$and", parts) if parts else None}
    if mode != "dense":
        if not query.query_str:
            raise ValueError(f"a {query.mode.value} query needs a query_str")
        args["mode"] = mode
    if mode == "keyword":
        args["query"] = query.query_str
        return args
    if mode == "hybrid":
        args["keyword"] = query.query_str
        if query.alpha is not None:
            args["fusion"] = {"method": "weighted", "alpha": query.alpha}
    if query.query_embedding is not None:
        args["vector"] = query.query_embedding
    elif query.query_str:
        args["query"] = query.query_str
    else:
        raise ValueError("a VectorStoreQuery needs a query_embedding or a query_str")
    return args


def query_result(hits: list[Hit], query: VectorStoreQuery) -> VectorStoreQueryResult:
    if query.node_ids:
        wanted = set(query.node_ids)
        hits = [h for h in hits if h.id in wanted][:query.similarity_top_k]
    return VectorStoreQueryResult(nodes=[to_node(h.id, h.text, h.metadata or {}) for h in hits],
                                  similarities=[h.score for h in hits], ids=[h.id for h in hits])


# -- filters ---------------------------------------------------------------------------------------


def to_filter(filters: MetadataFilters) -> dict[str, Any]:
    """``MetadataFilters`` as the server's filter. EQ NE GT GTE LT LTE IN NIN become ``$eq`` ... ``$nin``,
    IS_EMPTY ``$in: [null, ""]`` (absent, null or ""), AND / OR ``$and`` / ``$or``, NOT ``$not`` of their
    ``$or`` (none matches); nested ``MetadataFilters`` likewise. A dotted key is a path into nested
    metadata. Other operators (TEXT_MATCH, CONTAINS, ANY, ALL, ...) raise ValueError."""
    parts = [to_filter(f) if isinstance(f, MetadataFilters) else _condition(f) for f in filters.filters]
    if not parts:
        return {}
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return _joined("$and", parts)
    if condition == FilterCondition.OR:
        return _joined("$or", parts)
    if condition == FilterCondition.NOT:
        return {"$not": _joined("$or", parts)}
    raise ValueError(f"embedsearch filters cannot express the filter condition {condition!r}")


def _joined(operator: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return parts[0] if len(parts) == 1 else {operator: parts}


def _condition(f: MetadataFilter) -> dict[str, Any]:
    if f.operator == FilterOperator.IS_EMPTY:
        return {f.key: {"$in": [None, ""]}}
    if f.operator not in _OPERATORS:
        raise ValueError(f"embedsearch filters cannot express the {f.operator.name} operator "
                         f"({f.operator.value!r}, on {f.key!r})")
    return _compare(f.key, f.operator, f.value)


def _compare(key: str, operator: FilterOperator, value: Any) -> dict[str, Any]:
    if operator in (FilterOperator.IN, FilterOperator.NIN):
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:  # the server takes no empty lists: in nothing matches none, not in nothing all
            return _NOTHING if operator == FilterOperator.IN else {}
        return {key: {_OPERATORS[operator]: values}}
    return {key: {_OPERATORS[operator]: value}}
