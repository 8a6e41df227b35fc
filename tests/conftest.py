from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from service.settings import Settings
from tests.postgres import PostgresUnavailable, fresh_database, start_postgres
from benchmarks.tiny_model import save_tiny_gemma

API_KEY = "test-admin-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TIERS = ("unit", "integration", "system")  # see pyproject.toml's markers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that carries no tier: the fast subset (`make test-fast`) must not guess."""
    untiered = [item.nodeid for item in items if not any(item.iter_markers(name) for name in TIERS)]
    if untiered:
        raise pytest.UsageError(f"tests without a tier marker ({', '.join(TIERS)}): {', '.join(untiered[:10])}")


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Registry entries for tiny models: mean pooling, last-token pooling, and dense layers with prompts."""
    root = tmp_path_factory.mktemp("models")
    mean = save_tiny_gemma(root / "tiny")
    dense = save_tiny_gemma(root / "tiny-dense", dense_out=16)
    entries = {
        "tiny": {"source": str(mean), "max_tokens": 64},
        "tiny-last": {"source": str(mean), "pooling": "last", "max_tokens": 64},
        "tiny-dense": {
            "source": str(dense), "max_tokens": 64, "dimension": 16, "bidirectional": True,
            "query_prompt": "query: ", "document_prompt": "document: ",
        },
    }
    path = root / "models.json"
    path.write_text(json.dumps({"models": entries}))
    return path


@pytest.fixture
def settings(tmp_path: Path, models_file: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api_key=API_KEY,
        models="tiny,tiny-last,tiny-dense",
        models_file=str(models_file),
        batch_wait_ms=5,
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server for the whole session (or EMBEDSEARCH_TEST_POSTGRES_URL); skips the
    test when the server binaries are not installed (see tests/postgres.py)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(start_postgres())
        except PostgresUnavailable as exc:
            pytest.skip(f"PostgreSQL tests skipped: {exc}")
        yield url


def real_model_cache() -> Path:
    """Where tests keep the converted gemma3:270m (converted once, then reused across runs)."""
    return Path(os.environ.get("EMBEDSEARCH_TEST_CACHE", Path.home() / ".cache" / "embedsearch-tests" / "models"))


@contextlib.asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator:
    """An in-process client of a fully started app (lifespan run, models loaded), with the admin key."""
    from litestar.testing import AsyncTestClient

    from service.api.app import create_app

    async with AsyncTestClient(create_app(settings), base_url="http://testserver.local") as client:
        await wait_ready(client)
        client.headers.update(AUTH)
        yield client


@pytest.fixture
async def client(settings: Settings):
    async with app_client(settings) as client:
        yield client


async def wait_ready(client, timeout: float = 120.0) -> None:
    """Poll /health until every model is loaded (the app runs in its own event loop)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (await client.get("/health")).json()["status"]
        if status == "ready":
            return
        assert status == "loading", status
        await asyncio.sleep(0.05)
    raise TimeoutError("models did not load")


@contextlib.asynccontextmanager
async def client_on(request: pytest.FixtureRequest, settings: Settings, database: str,
                    backend: str = "faiss") -> AsyncIterator:
    """The `client` fixture's app on SQLite or on a fresh database of the session's PostgreSQL, with its vectors
    in FAISS or in Milvus (milvus-lite in the data dir)."""
    with contextlib.ExitStack() as stack:
        if database == "postgresql":
            url = stack.enter_context(fresh_database(request.getfixturevalue("postgres_url")))
            settings = msgspec.structs.replace(settings, database_url=url)
        async with app_client(msgspec.structs.replace(settings, vector_backend=backend)) as client:
            yield client


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_client(request: pytest.FixtureRequest, settings: Settings):
    """The `client` fixture's app, on SQLite or on a fresh database of the session's PostgreSQL."""
    async with client_on(request, settings, request.param) as client:
        yield client


@pytest.fixture(params=["sqlite", "postgresql", "milvus"])
async def backend_client(request: pytest.FixtureRequest, settings: Settings):
    """`db_client`, and the app on SQLite with its vectors in Milvus (milvus-lite) instead of FAISS."""
    database, backend = ("sqlite", "milvus") if request.param == "milvus" else (request.param, "faiss")
    async with client_on(request, settings, database, backend) as client:
        yield client
