"""GET /metrics (Prometheus) and GET /ready (readiness), both without a key, like GET /health."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy import Engine, text

from service.encoder.hub import ModelHub
from service.observability.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("service.ready")

DATABASE_TIMEOUT = 2.0  # seconds /ready waits for SELECT 1


class CollectionsHealth(msgspec.Struct, kw_only=True):
    # Ids of the collections that could not be opened: each answers 503 (the others are served), so the
    # server stays ready; the log says why.
    failed: list[int]


class Ready(msgspec.Struct, kw_only=True):
    status: Literal["ready", "not_ready"]
    models: dict[str, str]  # name -> loading | ready | error
    database: Literal["ok", "error"]
    collections: CollectionsHealth


@get(
    "/metrics",
    exclude_from_auth=True,
    tags=["operations"],
    summary="Prometheus metrics (text exposition format 0.0.4)",
    media_type=CONTENT_TYPE,
    sync_to_thread=False,
)
def metrics_endpoint(state: State) -> Response[str]:
    registry: Metrics = state.metrics
    services = state.get("services")
    return Response(
        registry.render(services.hub if services else None, services.collections if services else None),
        media_type=CONTENT_TYPE,
    )


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _database_ok(engine: Engine) -> bool:
    try:
        await asyncio.wait_for(asyncio.to_thread(_select_one, engine), DATABASE_TIMEOUT)
    except Exception as exc:  # TimeoutError included; the reason goes to the log, not to the client
        log.warning("readiness: the database did not answer SELECT 1: %s", type(exc).__name__, exc_info=exc)
        return False
    return True


@get(
    "/ready",
    exclude_from_auth=True,
    tags=["health"],
    summary="Readiness: every model loaded and the database answering",
    responses={503: ResponseSpec(Ready, description="Not ready: the body says what is not")},
)
async def ready(hub: ModelHub, state: State) -> Response[Ready]:
    models = hub.status
    database_ok = await _database_ok(state.services.engine)
    ok = database_ok and all(status == "ready" for status in models.values())
    body = Ready(status="ready" if ok else "not_ready", models=models, database="ok" if database_ok else "error",
                 collections=CollectionsHealth(failed=state.services.collections.failed()))
    return Response(body, status_code=200 if ok else 503)
