"""GET /health (liveness), GET /ready (readiness) and GET /metrics (Prometheus), all without a key."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from service.api.schemas import Health as HealthBody
from service.api.state import services
from service.errors import Unavailable
from service.observability.metrics import CONTENT_TYPE, Metrics


class CollectionsHealth(msgspec.Struct, kw_only=True):
    # Ids of the collections that could not be opened: each answers 503 (the others are served), so the
    # server stays ready; the log says why.
    failed: list[int]


class ProcessesHealth(msgspec.Struct, kw_only=True):
    engine: Literal["ok", "unavailable"]  # the engine process (models and indexes) answers
    workers: int  # HTTP worker processes connected to it with every model ready (0: all in one process)
    expected_workers: int  # EMBEDSEARCH_WORKERS: ready once every one is connected


class Ready(msgspec.Struct, kw_only=True):
    status: Literal["ready", "not_ready"]
    models: dict[str, str]  # name -> loading | ready | error
    database: Literal["ok", "error"]
    collections: CollectionsHealth
    processes: ProcessesHealth


@get("/health", exclude_from_auth=True, tags=["health"], summary="Liveness and model readiness")
async def health(request: Request) -> Response[HealthBody]:
    models = services(request).health.models()
    states = set(models.values())
    status = "error" if "error" in states else "loading" if "loading" in states else "ready"
    return Response(HealthBody(status=status, models=models))


@get(
    "/ready",
    exclude_from_auth=True,
    tags=["health"],
    summary="Readiness: every model loaded and the database answering",
    responses={503: ResponseSpec(Ready, description="Not ready: the body says what is not")},
)
async def ready(request: Request) -> Response[Ready]:
    state = await services(request).health.readiness()
    body = Ready(status="ready" if state.ready else "not_ready", models=state.models,
                 database="ok" if state.database else "error",
                 collections=CollectionsHealth(failed=state.failed_collections),
                 processes=ProcessesHealth(engine="ok" if state.engine else "unavailable", workers=state.workers,
                                           expected_workers=state.expected_workers))
    return Response(body, status_code=200 if state.ready else 503)


@get(
    "/metrics",
    exclude_from_auth=True,
    tags=["operations"],
    summary="Prometheus metrics (text exposition format 0.0.4)",
    media_type=CONTENT_TYPE,
)
async def metrics_endpoint(state: State) -> Response[str]:
    registry: Metrics = state.metrics
    services = state.get("services")
    engine = None
    if services is not None:
        try:
            engine = await services.engine.status()
        except Unavailable:  # the engine process is being restarted: the HTTP series alone
            pass
    return Response(registry.render(engine), media_type=CONTENT_TYPE)
