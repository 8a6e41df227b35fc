"""A client that goes away stops its request: the disconnect middleware, and on a real server the
encoder's forward passes for it."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from service.api.disconnect import CLIENT_CLOSED_REQUEST, CancelOnDisconnect
from tests.conftest import API_KEY
from tests.server import ServerProcess

SCOPE = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []}


class Client:
    """A hand-made ASGI connection: one body message, then ``http.disconnect`` once ``leave()`` is called
    (never, if it is not); it records what the app sent and whether its last ``receive()`` was cancelled."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.sent: list[dict] = []
        self.calls = 0
        self.wait_cancelled = False

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> dict:
        self.calls += 1
        if self.calls == 1:
            return {"type": "http.request", "body": b"{}", "more_body": False}
        try:
            await self.left.wait()
        except asyncio.CancelledError:
            self.wait_cancelled = True
            raise
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)


class App:
    """Reads the body, then awaits ``work`` (say, the encoder); records how that ended."""

    def __init__(self, work) -> None:
        self.work = work
        self.outcome = ""

    async def __call__(self, scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        try:
            await self.work(send)
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise
        self.outcome = "done"


async def respond(send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def other_tasks() -> set[asyncio.Task]:
    return asyncio.all_tasks() - {asyncio.current_task()}


@pytest.mark.unit
async def test_a_disconnect_while_the_handler_waits_cancels_it():
    client = Client()

    async def wait_for_the_encoder(send) -> None:
        client.leave()  # the client gives up while the handler waits
        await asyncio.sleep(60)
        await respond(send)

    app = App(wait_for_the_encoder)
    await asyncio.wait_for(CancelOnDisconnect(app)(SCOPE, client.receive, client.send), 5)
    assert app.outcome == "cancelled"
    assert client.sent[0]["status"] == CLIENT_CLOSED_REQUEST  # for the access log and metrics; dropped by the server
    assert not other_tasks()


@pytest.mark.unit
async def test_without_a_disconnect_nothing_is_cancelled_and_the_watcher_ends_with_the_request():
    client = Client()

    async def work(send) -> None:
        await asyncio.sleep(0.05)
        await respond(send)

    app = App(work)
    await asyncio.wait_for(CancelOnDisconnect(app)(SCOPE, client.receive, client.send), 5)
    assert app.outcome == "done"
    assert [m.get("status") for m in client.sent] == [200, None]
    assert client.wait_cancelled  # the watcher's receive() did not outlive the request
    assert not other_tasks()


@pytest.mark.unit
async def test_a_response_under_way_is_not_interrupted():
    client = Client()

    async def stream(send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        client.leave()
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"ok"})

    app = App(stream)
    await asyncio.wait_for(CancelOnDisconnect(app)(SCOPE, client.receive, client.send), 5)
    assert app.outcome == "done"
    assert [m.get("status") for m in client.sent] == [200, None]


@pytest.mark.unit
async def test_a_handler_that_reads_no_body_is_not_watched_and_the_servers_cancellation_passes():
    client = Client()
    started = asyncio.Event()

    async def no_body(scope, receive, send) -> None:
        started.set()
        await asyncio.sleep(60)

    request = asyncio.ensure_future(CancelOnDisconnect(no_body)(SCOPE, client.receive, client.send))
    await started.wait()
    assert client.calls == 0
    request.cancel()  # as the server does on shutdown: not a disconnect, so it is not swallowed
    with pytest.raises(asyncio.CancelledError):
        await request
    assert client.sent == []


@pytest.mark.unit
async def test_a_cancelled_create_or_delete_still_finishes_its_bookkeeping(settings):
    """A client gone mid-commit cancels the handler: the commit and the bookkeeping after it (the index made
    or dropped, the registry) run to the end together, so a collection never exists in SQL alone, nor
    lingers after a delete."""
    from service.api.app import build
    from service.engine.registry import Registry
    from service.errors import NotFound
    from service.store import migrate
    from service.store.db import make_engine

    settings.data_dir.mkdir(parents=True)
    database = make_engine(settings.sqlalchemy_url)
    migrate.upgrade(database)
    services = build(settings, Registry.load(settings.models_file), database)
    collections, store = services.collections, services.collections.store
    loop = asyncio.get_running_loop()

    async def cancelled_mid_commit(method: str, call) -> None:
        in_sql, release = asyncio.Event(), asyncio.Event()
        real = getattr(store, method)

        def gated(*args, **kwargs):
            result = real(*args, **kwargs)
            loop.call_soon_threadsafe(in_sql.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
            return result

        setattr(store, method, gated)
        task = asyncio.ensure_future(call)
        await asyncio.wait_for(in_sql.wait(), 10)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        setattr(store, method, real)

    await cancelled_mid_commit("create_collection", collections.create("t", "c", model=None, dimension=2,
                                                                       metric="cosine", index="Flat"))
    row = store.get_collection("t", "c")
    assert await services.engine.index_state(row.id) == "ready"  # made with its row, not only on first use
    await cancelled_mid_commit("delete_collection", collections.delete("t", "c"))
    assert store.get_collection("t", "c") is None and await services.engine.index_state(row.id) is None
    with pytest.raises(NotFound):
        await collections.get("t", "c")
    database.dispose()


# -- a real server ------------------------------------------------------------------------------

INPUTS = 2048
PASSES = re.compile(r'^embedsearch_encoder_forward_passes_total\{model="tiny"\} (\S+)$', re.M)
QUEUE = re.compile(r'^embedsearch_encoder_queue_depth\{model="tiny"\} (\S+)$', re.M)


@pytest.fixture
def slow_server(tmp_path: Path, models_file: Path):
    """One input per forward pass: a request of 2048 inputs takes seconds of encoder time."""
    env = {"EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
           "EMBEDSEARCH_BATCH_MAX_INPUTS": "1", "EMBEDSEARCH_LOG_LEVEL": "WARNING"}
    proc = ServerProcess(tmp_path / "data", env).start()
    yield proc
    proc.stop()


def gauge(server: ServerProcess, pattern: re.Pattern) -> int:
    return int(float(pattern.search(httpx.get(server.url + "/metrics").text).group(1)))


def settled_passes(server: ServerProcess, timeout: float = 120.0) -> int:
    """The forward-pass counter once it has stopped moving (two reads half a second apart agree)."""
    deadline = time.monotonic() + timeout
    last = gauge(server, PASSES)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = gauge(server, PASSES)
        if now == last:
            return now
        last = now
    raise TimeoutError("the encoder kept running")


@pytest.mark.system
def test_a_client_that_gives_up_stops_its_forward_passes(slow_server: ServerProcess):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    text = "the quick brown fox jumps over the lazy dog " * 6
    with pytest.raises(httpx.TimeoutException):
        httpx.post(slow_server.url + "/v1/embeddings", json={"model": "tiny", "input": [text] * INPUTS},
                   headers=headers, timeout=0.5)  # the client disconnects after half a second
    passes = settled_passes(slow_server)
    assert passes < INPUTS // 2, passes  # all of them run without the disconnect middleware
    assert gauge(slow_server, QUEUE) == 0
    response = httpx.post(slow_server.url + "/v1/embeddings", json={"model": "tiny", "input": "still here"},
                          headers=headers, timeout=30)
    assert response.status_code == 200
    assert gauge(slow_server, PASSES) == passes + 1
