"""GET /v1/models and /v1/models/{id}, as OpenAI's, plus the unauthenticated GET /health."""

from __future__ import annotations

from litestar import Controller, Response, get

from service.api.responses import errors
from service.api.schemas import Health, Model, ModelList
from service.encoder.hub import ModelHub, ServedModel
from service.errors import ModelNotFound


def _model(name: str, served: ServedModel) -> Model:
    return Model(id=name, created=served.created, owned_by=served.spec.owned_by)


class ModelsController(Controller):
    path = "/v1/models"
    tags = ["models"]

    @get("/", summary="List the served models", responses=errors())
    async def list_models(self, hub: ModelHub) -> ModelList:
        return ModelList(data=[_model(name, served) for name, served in hub.models.items()])

    @get("/{model_id:str}", summary="Describe one model", responses=errors(404))
    async def get_model(self, model_id: str, hub: ModelHub) -> Model:
        served = hub.models.get(model_id)
        if served is None:
            raise ModelNotFound(f"The model `{model_id}` does not exist or is not served here.", param="model")
        return _model(model_id, served)


@get("/health", exclude_from_auth=True, tags=["health"], summary="Liveness and model readiness")
async def health(hub: ModelHub) -> Response[Health]:
    states = set(hub.status.values())
    status = "error" if "error" in states else "loading" if "loading" in states else "ready"
    return Response(Health(status=status, models=hub.status))
