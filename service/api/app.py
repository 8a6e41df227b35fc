"""The application factory: the composition root that builds every part, and the HTTP app around them.

Only here are the parts wired together: the store (SQL), the engine (models and indexes), the domain
services over them, and the Litestar app (routes, authentication, limits, errors, OpenAPI docs) that
reaches the domain alone, with its two web pages (service/api/pages.py). The lifespan owns every
resource: it opens them on start and closes them on shutdown, snapshotting the indexes last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from litestar import Litestar
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from typing import TYPE_CHECKING

from sqlalchemy import Engine as Database

from service.api.auth import BearerAuth
from service.api.collections import CollectionsController
from service.api.disconnect import CancelOnDisconnect
from service.api.embeddings import EmbeddingsController
from service.api.errors import exception_handlers
from service.api.keys import KeysController
from service.api.limits import LimitedRequest
from service.api.models import ModelsController
from service.api.operations import health, metrics_endpoint, ready
from service.api.pages import SwaggerUI, console_router, docs_router
from service.api.paths import WholeDocumentIds
from service.api.ratelimit import RateLimiter
from service.api.responses import StrictBodies
from service.domain.collections import Collections
from service.domain.documents import Documents
from service.domain.embeddings import Embeddings
from service.domain.health import Health
from service.domain.keys import Keys
from service.domain.search import Search
from service.engine.client import EngineClient
from service.engine.registry import Registry
from service.observability.metrics import Metrics
from service.observability.middleware import instrument
from service.settings import Settings
from service.store import migrate
from service.store.db import make_engine
from service.store.documents import DocumentStore
from service.store.keys import ADMIN_TENANT, KeyStore

if TYPE_CHECKING:
    from service.engine.engine import Engine

log = logging.getLogger("service")


@dataclass
class Services:
    settings: Settings
    database: Database
    keys: KeyStore
    engine: Engine | EngineClient
    authenticator: Keys
    embeddings: Embeddings
    collections: Collections
    documents: Documents
    search: Search
    health: Health


def build(settings: Settings, registry: Registry, database: Database,
          engine_process: tuple[str, bytes] | None = None) -> Services:
    """Every part, wired: store -> engine -> domain. With ``engine_process`` (an HTTP worker's: its address and
    this start's secret), the engine is the engine process listening there; else it runs in this process."""
    store = DocumentStore(database)
    keys = KeyStore(database)
    engine: Engine | EngineClient
    if engine_process is None:
        from service.engine.engine import Engine  # torch and the models: never imported by an HTTP worker

        engine = Engine(settings, registry, store)
    else:
        engine = EngineClient(settings, registry, *engine_process)
    embeddings = Embeddings(engine, max_inputs=settings.max_inputs, max_request_tokens=settings.max_request_tokens,
                            truncate=settings.truncate)
    collections = Collections(store, engine, embeddings, quota=settings.max_collections or None)
    documents = Documents(store, engine, collections, embeddings)
    return Services(settings, database, keys, engine, Keys(keys, settings.api_key), embeddings, collections,
                    documents, Search(store, engine, collections, documents),
                    Health(engine, database, 0 if engine_process is None else settings.http_workers))


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


def create_app(settings: Settings, registry: Registry | None = None,
               engine_process: tuple[str, bytes] | None = None) -> Litestar:
    """The HTTP app; with ``engine_process`` (an address and a secret), an HTTP worker's (service/supervisor.py
    has migrated the database and made the first key), reaching the engine process there."""
    registry = registry or Registry.load(settings.models_file)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        database = make_engine(settings.sqlalchemy_url)
        if engine_process is None:
            migrate.upgrade(database)
        services = build(settings, registry, database, engine_process)
        if engine_process is None:
            ensure_admin_key(services.keys, settings)
        await services.engine.start()
        app.state.authenticator = services.authenticator
        app.state.services = services
        try:
            yield
        finally:
            await services.engine.stop()
            database.dispose()

    # Per-key token buckets, owned by this app; each HTTP worker holds its share of the rate.
    limiter = RateLimiter.from_settings(settings, 1 if engine_process is None else settings.http_workers)
    app = Litestar(
        route_handlers=[EmbeddingsController, ModelsController, CollectionsController, KeysController, health, ready,
                        metrics_endpoint, console_router()],
        # Outermost first: a handler whose client went away stops waiting (for the encoder, say).
        middleware=[DefineMiddleware(CancelOnDisconnect),
                    BearerAuth],
        guards=[limiter.guard] if limiter is not None else [],  # guards run after the auth middleware
        exception_handlers=exception_handlers,
        logging_config=None,  # logging is set up by the CLI (service.observability.logging), not replaced here
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        request_class=LimitedRequest,  # JSON bodies nested too deeply are a 400 before decoding
        plugins=[StrictBodies()],
        openapi_config=OpenAPIConfig(
            title="embedsearch",
            version="0.1.0",
            description="OpenAI-compatible embeddings on Gemma 3, and vector search over FAISS + SQL.",
            path="/docs",
            openapi_router=docs_router(),
            render_plugins=[SwaggerUI()],  # served from this server: the docs render offline
            components=Components(security_schemes={"apiKey": SecurityScheme(
                type="http", scheme="bearer", description="An API key: `Authorization: Bearer es-...`")}),
            security=[{"apiKey": []}],
        ),
    )
    app.asgi_handler = WholeDocumentIds(app.asgi_handler)  # document ids with "/" reach their routes whole
    return instrument(app, Metrics())  # request ids, access log and HTTP metrics around every request
