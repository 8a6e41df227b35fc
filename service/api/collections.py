"""Collections, documents and search: wire in, domain calls, wire out."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.params import Parameter

from service.api import wire
from service.api.paths import document_id
from service.api.responses import errors
from service.api.schemas import (
    BatchSearchResponse,
    Collection,
    CollectionCreate,
    CollectionList,
    DeleteRequest,
    DeleteResponse,
    Deleted,
    Document,
    DocumentList,
    DocumentPage,
    EncodingFormat,
    FusionParams,
    FusionWeights,
    GetRequest,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
    Usage,
)
from service.api.state import caller, services
from service.domain.fusion import Fusion
from service.domain.search import Query
from service.errors import InvalidRequest

QUERY_FIELDS = ("query", "vector", "queries", "vectors")


def _query(data: SearchRequest) -> Query:
    given = [name for name in QUERY_FIELDS if getattr(data, name) is not None]
    if len(given) != 1:
        raise InvalidRequest("Give exactly one of query, vector, queries or vectors.",
                             param=given[0] if given else "query")
    field = given[0]
    value = getattr(data, field)
    items = [value] if field in ("query", "vector") else value
    if field in ("query", "queries"):
        texts, vectors = items, None
    else:
        texts, vectors = None, [wire.vector_in(v, field if field == "vector" else f"{field}[{i}]", field)
                                for i, v in enumerate(items)]
    if data.keyword is not None and data.mode == "dense":
        raise InvalidRequest("keyword is for mode keyword or hybrid.", param="keyword")
    if data.fusion is not None and data.mode != "hybrid":
        raise InvalidRequest("fusion is for mode hybrid.", param="fusion")
    return Query(field=field, texts=texts, vectors=vectors, top_k=data.top_k, filter=data.filter,
                 include=frozenset(data.include), min_score=data.min_score, mode=data.mode, keyword=data.keyword,
                 fusion=_fusion(data.fusion, data.top_k), explain=data.explain)


# Each method's own fields: one of the other method's is refused, not ignored.
_FUSION_FIELDS = {"rrf": ("k", "weights"), "weighted": ("alpha",)}


def _fusion(given: FusionParams | None, top_k: int) -> Fusion:
    candidates = given.candidates if given is not None and given.candidates is not None else max(
        Fusion.candidates, top_k)
    if given is None:
        return Fusion(candidates=candidates)
    for method, fields in _FUSION_FIELDS.items():
        wrong = [name for name in fields if method != given.method and getattr(given, name) is not None]
        if wrong:
            raise InvalidRequest(f"fusion.{wrong[0]} belongs to method `{method}`, not `{given.method}`"
                                 + (" (the default)" if given.method == "rrf" else "")
                                 + f": give \"method\": \"{method}\" or leave {wrong[0]} out.",
                                 param="fusion", code="unknown_parameter")
    if given.method == "weighted":
        return Fusion("weighted", candidates, alpha=given.alpha if given.alpha is not None else Fusion.alpha)
    weights = given.weights or FusionWeights()
    return Fusion("rrf", candidates, given.k if given.k is not None else Fusion.k, weights.dense, weights.keyword)


class CollectionsController(Controller):
    path = "/v1/collections"
    tags = ["collections"]

    @post("/", status_code=201, summary="Create a collection", responses=errors(404, 409, 413))
    async def create(self, data: CollectionCreate, request: Request) -> Collection:
        info = await services(request).collections.create(caller(request).tenant, data.name, model=data.model,
                                                          dimension=data.dimension, metric=data.metric, index=data.index)
        return wire.collection(info)

    @get("/", summary="List your collections (by name, a page at a time)", responses=errors())
    async def list_collections(
        self,
        request: Request,
        limit: Annotated[int, Parameter(description="page size, 1-1000")] = 100,
        cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
    ) -> CollectionList:
        infos, more = await services(request).collections.list(
            caller(request).tenant, after=wire.decode_cursor(cursor) if cursor else None, limit=limit)
        return CollectionList(data=[wire.collection(info) for info in infos], has_more=more,
                              next_cursor=wire.encode_cursor(infos[-1].name) if more and infos else None)

    @get("/{name:str}", summary="Describe a collection", responses=errors(404))
    async def get_collection(self, name: str, request: Request) -> Collection:
        return wire.collection(await services(request).collections.describe(caller(request).tenant, name))

    @delete("/{name:str}", status_code=200, summary="Delete a collection with its documents and index",
            responses=errors(404))
    async def delete_collection(self, name: str, request: Request) -> Deleted:
        await services(request).collections.delete(caller(request).tenant, name)
        return Deleted(id=name, object="collection")

    @post("/{name:str}/documents", status_code=200, summary="Upsert up to 1000 documents", responses=errors(404, 413))
    async def upsert(self, name: str, data: UpsertRequest, request: Request) -> UpsertResponse:
        for i, doc in enumerate(data.documents):
            if isinstance(doc.vector, str):
                doc.vector = wire.vector_in(doc.vector, f"documents[{i}].vector", "documents")
        ids, tokens = await services(request).documents.upsert(caller(request).tenant, name, data.documents)
        return UpsertResponse(ids=ids, upserted=len(ids), usage=Usage(prompt_tokens=tokens, total_tokens=tokens))

    @get("/{name:str}/documents", summary="Page through documents (by id), optionally filtered", responses=errors(404))
    async def list_documents(
        self,
        name: str,
        request: Request,
        limit: Annotated[int, Parameter(description="page size, 1-1000")] = 100,
        cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
        filter: Annotated[str | None, Parameter(description="metadata filter as JSON")] = None,
    ) -> DocumentPage:
        docs, more = await services(request).documents.page(caller(request).tenant, name, limit=limit,
                                                             after=wire.decode_cursor(cursor) if cursor else None,
                                                             filter=wire.filter_param(filter))
        return DocumentPage(data=[wire.document(d, False) for d in docs], has_more=more,
                            next_cursor=wire.encode_cursor(docs[-1].id) if more else None)

    # An id may hold "/" (sent as %2F): service/api/paths.py hands it to routing as one segment.
    @get("/{name:str}/documents/{doc_id:str}", summary="Get a document (`?include=vector` adds its vector)",
         responses=errors(404))
    async def get_document(
        self,
        name: str,
        doc_id: str,
        request: Request,
        include: Annotated[Literal["vector"] | None, Parameter(description="`vector` to include the vector")] = None,
        encoding_format: Annotated[EncodingFormat, Parameter(
            description="the vector as JSON numbers (`float`) or base64 of little-endian float32")] = "float",
    ) -> Document:
        doc = await services(request).documents.get(caller(request).tenant, name, document_id(doc_id))
        return wire.document(doc, include == "vector", encoding_format)

    @delete("/{name:str}/documents/{doc_id:str}", status_code=200, summary="Delete a document", responses=errors(404))
    async def delete_document(self, name: str, doc_id: str, request: Request) -> Deleted:
        doc_id = document_id(doc_id)
        await services(request).documents.delete(caller(request).tenant, name, doc_id)
        return Deleted(id=doc_id, object="document")

    @post("/{name:str}/documents/get", status_code=200, summary="Get up to 1000 documents by id, in that order",
          responses=errors(404, 413))
    async def get_documents(self, name: str, data: GetRequest, request: Request) -> DocumentList:
        with_vectors = "vector" in data.include
        docs = await services(request).documents.get_many(caller(request).tenant, name, data.ids, with_vectors)
        return DocumentList(data=[wire.document(d, with_vectors, data.encoding_format) for d in docs])

    @post("/{name:str}/documents/delete", status_code=200, summary="Delete documents by ids and/or filter",
          responses=errors(404, 413))
    async def delete_documents(self, name: str, data: DeleteRequest, request: Request) -> DeleteResponse:
        deleted = await services(request).documents.delete_many(caller(request).tenant, name, data.ids, data.filter)
        return DeleteResponse(deleted=deleted)

    @post("/{name:str}/search", status_code=200, summary="Similarity search by text or vector, with filters",
          responses=errors(404, 413))
    async def search(
        self, name: str, data: SearchRequest, request: Request
    ) -> SearchResponse | BatchSearchResponse:
        query = _query(data)
        answer = await services(request).search.search(caller(request).tenant, name, query)
        include, single = set(query.include), query.field in ("query", "vector")
        if wire.shaped_inline(answer, include):
            body = wire.found(answer, include, single, data.encoding_format, data.explain)
        else:  # big answers are shaped and encoded off the event loop
            body = await asyncio.to_thread(wire.found, answer, include, single, data.encoding_format, data.explain)
        return Response(body, media_type=MediaType.JSON)  # type: ignore[return-value]
