"""Collections, documents and search: wire in, domain calls, wire out."""

from __future__ import annotations

import asyncio
from typing import Annotated

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
    DocumentPage,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
    Usage,
)
from service.domain.collections import Collections
from service.domain.documents import Documents
from service.domain.search import Query, Search
from service.errors import InvalidRequest
from service.store.keys import Principal

QUERY_FIELDS = ("query", "vector", "queries", "vectors")


def principal(request: Request) -> Principal:
    return request.user


def _query(data: SearchRequest) -> Query:
    given = [name for name in QUERY_FIELDS if getattr(data, name) is not None]
    if len(given) != 1:
        raise InvalidRequest("Give exactly one of query, vector, queries or vectors.",
                             param=given[0] if given else "query")
    field = given[0]
    value = getattr(data, field)
    items = [value] if field in ("query", "vector") else value
    texts, vectors = (items, None) if field in ("query", "queries") else (None, items)
    return Query(field=field, texts=texts, vectors=vectors, top_k=data.top_k, filter=data.filter,
                 include=frozenset(data.include), min_score=data.min_score)


class CollectionsController(Controller):
    path = "/v1/collections"
    tags = ["collections"]

    @post("/", status_code=201, summary="Create a collection", responses=errors(404, 409, 413))
    async def create(self, data: CollectionCreate, collections: Collections, principal: Principal) -> Collection:
        info = await collections.create(principal.tenant, data.name, model=data.model, dimension=data.dimension,
                                        metric=data.metric, index=data.index)
        return wire.collection(info)

    @get("/", summary="List your collections", responses=errors())
    async def list_collections(self, collections: Collections, principal: Principal) -> CollectionList:
        return CollectionList(data=[wire.collection(info) for info in await collections.list(principal.tenant)])

    @get("/{name:str}", summary="Describe a collection", responses=errors(404))
    async def get_collection(self, name: str, collections: Collections, principal: Principal) -> Collection:
        return wire.collection(await collections.describe(principal.tenant, name))

    @delete("/{name:str}", status_code=200, summary="Delete a collection with its documents and index",
            responses=errors(404))
    async def delete_collection(self, name: str, collections: Collections, principal: Principal) -> Deleted:
        await collections.delete(principal.tenant, name)
        return Deleted(id=name, object="collection")

    @post("/{name:str}/documents", status_code=200, summary="Upsert up to 1000 documents", responses=errors(404, 413))
    async def upsert(self, name: str, data: UpsertRequest, documents: Documents, principal: Principal) -> UpsertResponse:
        ids, tokens = await documents.upsert(principal.tenant, name, data.documents)
        return UpsertResponse(ids=ids, upserted=len(ids), usage=Usage(prompt_tokens=tokens, total_tokens=tokens))

    @get("/{name:str}/documents", summary="Page through documents (by id), optionally filtered", responses=errors(404))
    async def list_documents(
        self,
        name: str,
        documents: Documents,
        principal: Principal,
        limit: Annotated[int, Parameter(description="page size, 1-1000")] = 100,
        cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
        filter: Annotated[str | None, Parameter(description="metadata filter as JSON")] = None,
    ) -> DocumentPage:
        docs, more = await documents.page(principal.tenant, name, limit=limit,
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
        documents: Documents,
        principal: Principal,
        include: Annotated[str | None, Parameter(description="`vector` to include the vector")] = None,
    ) -> Document:
        return wire.document(await documents.get(principal.tenant, name, document_id(doc_id)), include == "vector")

    @delete("/{name:str}/documents/{doc_id:str}", status_code=200, summary="Delete a document", responses=errors(404))
    async def delete_document(self, name: str, doc_id: str, documents: Documents, principal: Principal) -> Deleted:
        doc_id = document_id(doc_id)
        await documents.delete(principal.tenant, name, doc_id)
        return Deleted(id=doc_id, object="document")

    @post("/{name:str}/documents/delete", status_code=200, summary="Delete documents by ids and/or filter",
          responses=errors(404, 413))
    async def delete_documents(
        self, name: str, data: DeleteRequest, documents: Documents, principal: Principal
    ) -> DeleteResponse:
        return DeleteResponse(deleted=await documents.delete_many(principal.tenant, name, data.ids, data.filter))

    @post("/{name:str}/search", status_code=200, summary="Similarity search by text or vector, with filters",
          responses=errors(404, 413))
    async def search(
        self, name: str, data: SearchRequest, search: Search, principal: Principal
    ) -> SearchResponse | BatchSearchResponse:
        query = _query(data)
        answer = await search.search(principal.tenant, name, query)
        include, single = set(query.include), query.field in ("query", "vector")
        if wire.shaped_inline(answer, include):
            body = wire.found(answer, include, single)
        else:  # big answers are shaped and encoded off the event loop
            body = await asyncio.to_thread(wire.found, answer, include, single)
        return Response(body, media_type=MediaType.JSON)  # type: ignore[return-value]
