"""One real server for the client's tests (`python -m service serve` on loopback, the tiny model), with
small limits so that the client's batching must split: 1 MiB bodies, 2000 tokens a request."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from embedsearch import AsyncClient, Client
from tests.conftest import API_KEY
from tests.server import ServerProcess

MAX_BODY_BYTES = 1 << 20
MAX_REQUEST_TOKENS = 2000


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("client-live")
    proc = ServerProcess(root / "data", {
        "EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
        "EMBEDSEARCH_WORKERS": "1", "EMBEDSEARCH_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "EMBEDSEARCH_MAX_REQUEST_TOKENS": str(MAX_REQUEST_TOKENS), "EMBEDSEARCH_BATCH_WAIT_MS": "1",
    }).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="session")
def throttled(tmp_path_factory: pytest.TempPathFactory, models_file: Path):
    """A server allowing each key 2 requests a second (bursts of 2)."""
    proc = ServerProcess(tmp_path_factory.mktemp("throttled") / "data", {
        "EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
        "EMBEDSEARCH_WORKERS": "1", "EMBEDSEARCH_RATE_LIMIT_RPS": "2", "EMBEDSEARCH_RATE_LIMIT_BURST": "2"}).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def client(live: ServerProcess) -> Iterator[Client]:
    with Client(live.url + "/v1", API_KEY) as c:
        yield c


@pytest.fixture
async def aclient(live: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(live.url + "/v1", API_KEY) as c:
        yield c


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A collection name of this test's own."""
    return (re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:40] + "-" + uuid.uuid4().hex[:8])
