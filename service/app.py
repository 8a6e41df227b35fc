"""The application factory: routes, dependencies and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from sqlalchemy import Engine

from service.api.collections import CollectionsController, principal
from service.api.disconnect import CancelOnDisconnect
from service.api.embeddings import EmbeddingsController
from service.api.models import ModelsController, health
from service.api.paths import WholeDocumentIds
from service.auth import Authenticator, BearerAuthMiddleware
from service.collections import CollectionsService
from service.embeddings import EmbeddingsService
from service.encoder.hub import ModelHub
from service.encoder.registry import Registry
from service.errors import exception_handlers
from service.limits import LimitedRequest
from service.observability.metrics import Metrics
from service.observability.middleware import instrument
from service.observability.routes import metrics_endpoint, ready
from service.ratelimit import RateLimiter
from service.settings import Settings
from service.store import migrate
from service.store.db import make_engine
from service.store.documents import DocumentStore
from service.store.keys import ADMIN_TENANT, KeyStore

log = logging.getLogger("service")


@dataclass
class Services:
    settings: Settings
    engine: Engine
    keys: KeyStore
    hub: ModelHub
    embeddings: EmbeddingsService
    collections: CollectionsService


def ensure_admin_key(keys: KeyStore, settings: Settings) -> str | None:
    """Never run open: with no key configured anywhere, make an admin key and show it once."""
    if settings.api_key or keys.count():
        return None
    key = keys.create(ADMIN_TENANT, admin=True)
    print(
        "\n  No API key was configured, so an admin key was generated (shown only this once):\n"
        f"\n    {key}\n\n  Send it as `Authorization: Bearer <key>`. Set EMBEDSEARCH_API_KEY or run "
        "`python -m service keys create --tenant NAME` for more.\n",
        flush=True,
    )
    return key


def create_app(settings: Settings, registry: Registry | None = None) -> Litestar:
    registry = registry or Registry.load(settings.models_file)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.sqlalchemy_url)
        migrate.upgrade(engine)
        keys = KeyStore(engine)
        ensure_admin_key(keys, settings)
        hub = ModelHub(settings, registry)
        hub.start()
        embeddings = EmbeddingsService(hub, max_inputs=settings.max_inputs,
                                       max_request_tokens=settings.max_request_tokens, truncate=settings.truncate)
        collections = CollectionsService(DocumentStore(engine), embeddings, settings.data_dir, engine.dialect.name)
        await collections.start()
        snapshots = asyncio.get_running_loop().create_task(collections.run_snapshots(settings.snapshot_seconds))
        app.state.authenticator = Authenticator(keys, settings.api_key)
        app.state.services = Services(settings, engine, keys, hub, embeddings, collections)
        try:
            yield
        finally:
            snapshots.cancel()
            await collections.snapshot_all()
            await hub.stop()
            engine.dispose()

    def provide(attribute: str) -> Provide:
        def dependency(state: State) -> object:
            return getattr(state.services, attribute)

        return Provide(dependency, sync_to_thread=False)

    limiter = RateLimiter.from_settings(settings)  # per-key token buckets, owned by this app
    app = Litestar(
        route_handlers=[EmbeddingsController, ModelsController, CollectionsController, health, ready,
                        metrics_endpoint],
        dependencies={
            "hub": provide("hub"),
            "embeddings": provide("embeddings"),
            "collections": provide("collections"),
            "principal": Provide(principal, sync_to_thread=False),
        },
        # Outermost first: a handler whose client went away stops waiting (for the encoder, say).
        middleware=[DefineMiddleware(CancelOnDisconnect),
                    DefineMiddleware(BearerAuthMiddleware, exclude=["^/docs"])],
        guards=[limiter.guard] if limiter is not None else [],  # guards run after the auth middleware
        exception_handlers=exception_handlers,
        logging_config=None,  # logging is set up by the CLI (service.observability.logging), not replaced here
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        request_class=LimitedRequest,  # JSON bodies nested too deeply are a 400 before decoding
        openapi_config=OpenAPIConfig(
            title="embedsearch",
            version="0.1.0",
            description="OpenAI-compatible embeddings on Gemma 3, and vector search over FAISS + SQL.",
            path="/docs",
            render_plugins=[ScalarRenderPlugin()],
        ),
    )
    app.asgi_handler = WholeDocumentIds(app.asgi_handler)  # document ids with "/" reach their routes whole
    return instrument(app, Metrics())  # request ids, access log and HTTP metrics around every request
