"""POST /v1/embeddings, as OpenAI's."""

from __future__ import annotations

from litestar import Controller, post

from service.api.responses import errors
from service.api.schemas import EmbeddingRequest, EmbeddingResponse
from service.embeddings import EmbeddingsService
from service.store.keys import Principal


class EmbeddingsController(Controller):
    path = "/v1/embeddings"
    tags = ["embeddings"]

    @post("/", status_code=200, summary="Create embeddings (OpenAI-compatible)", responses=errors(404, 413))
    async def create(
        self, data: EmbeddingRequest, embeddings: EmbeddingsService, principal: Principal
    ) -> EmbeddingResponse:
        return await embeddings.create(data, key=principal.tenant)  # tenants share the encoder fairly
