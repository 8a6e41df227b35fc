"""GET /v1/models and /v1/models/{id}, as OpenAI's."""

from __future__ import annotations

from litestar import Controller, Request, get

from service.api.responses import errors
from service.api.schemas import Model, ModelList
from service.api.state import services
from service.domain.embeddings import ModelInfo
from service.errors import NotFound


def _model(info: ModelInfo) -> Model:
    return Model(id=info.name, created=info.created, owned_by=info.owned_by)


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]

    @get("/", summary="List the served models", responses=errors())
    async def list_models(self, request: Request) -> ModelList:
        return ModelList(data=[_model(info) for info in services(request).embeddings.models()])

    @get("/{model_id:str}", summary="Describe one model", responses=errors(404))
    async def get_model(self, model_id: str, request: Request) -> Model:
        for info in services(request).embeddings.models():
            if info.name == model_id:
                return _model(info)
        raise NotFound(f"The model `{model_id}` does not exist or is not served here.", param="model",
                       code="model_not_found")
