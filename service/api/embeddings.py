"""POST /v1/embeddings, as OpenAI's."""

from __future__ import annotations

from litestar import Controller, Request, post

from service.api import wire
from service.api.responses import errors
from service.api.schemas import Embedding, EmbeddingRequest, EmbeddingResponse, Usage
from service.api.state import caller, services


class EmbeddingsController(Controller):
    path = "/v1/embeddings"
    tags = ["embeddings"]

    @post("/", status_code=200, summary="Create embeddings (OpenAI-compatible)", responses=errors(404, 413))
    async def create(self, data: EmbeddingRequest, request: Request) -> EmbeddingResponse:
        vectors, tokens = await services(request).embeddings.embed(
            data.model, data.input, dimensions=data.dimensions, truncate=data.truncate,
            key=caller(request).tenant)  # tenants share the encoder fairly
        if data.encoding_format == "base64":  # little-endian float32, as OpenAI
            items = [wire.vector_out(v.astype("<f4").tobytes(), "base64") for v in vectors]
        else:
            items = vectors.tolist()
        return EmbeddingResponse(data=[Embedding(index=i, embedding=item) for i, item in enumerate(items)],
                                 model=data.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
