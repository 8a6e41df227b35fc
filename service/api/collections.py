"""Collections, documents and search: thin controllers over CollectionsService."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.params import Parameter

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
)
from service.collections import CollectionsService
from service.store.keys import Principal


def principal(request: Request) -> Principal:
    return request.user


class CollectionsController(Controller):
    path = "/v1/collections"
    tags = ["collections"]

    @post("/", status_code=201, summary="Create a collection", responses=errors(404, 409, 413))
    async def create(self, data: CollectionCreate, collections: CollectionsService, principal: Principal) -> Collection:
        return await collections.create(principal, data)

    @get("/", summary="List your collections", responses=errors())
    async def list_collections(self, collections: CollectionsService, principal: Principal) -> CollectionList:
        return await collections.list_all(principal)

    @get("/{name:str}", summary="Describe a collection", responses=errors(404))
    async def get_collection(self, name: str, collections: CollectionsService, principal: Principal) -> Collection:
        return await collections.get(principal, name)

    @delete("/{name:str}", status_code=200, summary="Delete a collection with its documents and index",
            responses=errors(404))
    async def delete_collection(self, name: str, collections: CollectionsService, principal: Principal) -> Deleted:
        return await collections.delete(principal, name)

    @post("/{name:str}/documents", status_code=200, summary="Upsert up to 1000 documents", responses=errors(404, 413))
    async def upsert(
        self, name: str, data: UpsertRequest, collections: CollectionsService, principal: Principal
    ) -> UpsertResponse:
        return await collections.upsert(principal, name, data)

    @get("/{name:str}/documents", summary="Page through documents (by id), optionally filtered", responses=errors(404))
    async def list_documents(
        self,
        name: str,
        collections: CollectionsService,
        principal: Principal,
        limit: Annotated[int, Parameter(description="page size, 1-1000")] = 100,
        cursor: Annotated[str | None, Parameter(description="next_cursor of the previous page")] = None,
        filter: Annotated[str | None, Parameter(description="metadata filter as JSON")] = None,
    ) -> DocumentPage:
        return await collections.list_documents(principal, name, limit, cursor, filter)

    # An id may hold "/" (sent as %2F): service/api/paths.py hands it to routing as one segment.
    @get("/{name:str}/documents/{doc_id:str}", summary="Get a document (`?include=vector` adds its vector)",
         responses=errors(404))
    async def get_document(
        self,
        name: str,
        doc_id: str,
        collections: CollectionsService,
        principal: Principal,
        include: Annotated[str | None, Parameter(description="`vector` to include the vector")] = None,
    ) -> Document:
        return await collections.get_document(principal, name, document_id(doc_id), include == "vector")

    @delete("/{name:str}/documents/{doc_id:str}", status_code=200, summary="Delete a document", responses=errors(404))
    async def delete_document(
        self, name: str, doc_id: str, collections: CollectionsService, principal: Principal
    ) -> Deleted:
        return await collections.delete_document(principal, name, document_id(doc_id))

    @post("/{name:str}/documents/delete", status_code=200, summary="Delete documents by ids and/or filter",
          responses=errors(404, 413))
    async def delete_documents(
        self, name: str, data: DeleteRequest, collections: CollectionsService, principal: Principal
    ) -> DeleteResponse:
        return await collections.delete_documents(principal, name, data)

    @post("/{name:str}/search", status_code=200, summary="Similarity search by text or vector, with filters",
          responses=errors(404, 413))
    async def search(
        self, name: str, data: SearchRequest, collections: CollectionsService, principal: Principal
    ) -> SearchResponse | BatchSearchResponse:
        # The service encodes the answer in its worker thread (big answers never hold the event loop).
        return Response(await collections.search(principal, name, data), media_type=MediaType.JSON)  # type: ignore[return-value]
