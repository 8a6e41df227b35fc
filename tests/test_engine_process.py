"""The engine boundary across a socket: an EngineServer and EngineClients (as HTTP workers hold them) in one
test process, on a real tiny Gemma 3, real FAISS indexes and a real SQLite database."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest

from service.engine.client import EngineClient
from service.engine.engine import Engine, Write
from service.engine.registry import Registry
from service.engine.server import EngineServer
from service.domain.search import Query
from service.errors import IndexGone, InvalidRequest, NotFound, Overloaded, Unavailable
from service.settings import Settings
from service.store import migrate
from service.store.db import make_engine
from service.store.documents import DocumentStore, NewDocument

pytestmark = pytest.mark.integration


class Setup:
    def __init__(self, settings: Settings) -> None:
        self.settings = msgspec.structs.replace(settings, models="tiny")
        self.registry = Registry.load(self.settings.models_file)
        self.address = f"@embedsearch-test-{secrets.token_hex(6)}"
        self.secret = secrets.token_bytes(32)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.database = make_engine(self.settings.sqlalchemy_url)
        migrate.upgrade(self.database)
        self.store = DocumentStore(self.database)
        self.engine = Engine(self.settings, self.registry, self.store)
        self.server: EngineServer | None = None

    async def serve(self) -> None:
        self.server = EngineServer(self.engine, self.settings.model_cache, self.secret)
        await self.server.start(self.address)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[EngineClient]:
        client = EngineClient(self.settings, self.registry, self.address, self.secret)
        await client.start()
        try:
            await ready(client)
            yield client
        finally:
            await client.stop()


async def ready(client: EngineClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.model_status() != {"tiny": "ready"}:
        assert time.monotonic() < deadline, "the client never saw the model ready"
        await asyncio.sleep(0.05)


@pytest.fixture
async def setup(settings: Settings) -> AsyncIterator[Setup]:
    setup = Setup(settings)
    await setup.engine.start()
    await setup.engine.models.wait_ready()
    await setup.serve()
    try:
        yield setup
    finally:
        await setup.server.close()
        await setup.engine.stop()
        setup.database.dispose()


def collection(setup: Setup, name: str = "c", dimension: int = 8):
    return setup.store.create_collection("t", name, None, dimension, "cosine", "Flat")


def upsert(setup: Setup, row, ids: list[str], vectors: np.ndarray) -> Write:
    """Commit to SQL as the domain does, and the write it hands the engine."""
    seqs, replaced = setup.store.upsert(row.id, [NewDocument(i, "", {}, v) for i, v in zip(ids, vectors)])
    return Write(int(seqs[-1]), replaced, seqs, vectors.astype(np.float32))


async def test_a_worker_embeds_tokenises_and_searches_as_the_engine_itself(setup: Setup):
    async with setup.client() as client:
        model = client.model("tiny")
        local = setup.engine.model("tiny")
        texts = ["hello world", "a longer sentence of a few words"]
        assert model.tokenizer.tokenize(texts) == local.tokenizer.tokenize(texts)  # from the engine's tokenizer.json
        assert (model.dimension, model.vocab_size) == (local.dimension, local.vocab_size)
        sequences = model.tokenizer.tokenize(texts)
        np.testing.assert_allclose(await client.embed("tiny", sequences, key="t"),
                                   await setup.engine.embed("tiny", sequences, key="t"), atol=1e-6)

        row = collection(setup)
        await client.create_index(row.id)
        vectors = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
        write = upsert(setup, row, [f"d{i}" for i in range(20)], vectors)
        await asyncio.to_thread(client.apply, row.id, write)
        assert await asyncio.to_thread(client.indexed, row.id) == 20
        scores, seqs = await asyncio.to_thread(client.search, row.id, vectors[:3], 5)
        want_scores, want_seqs = setup.engine.search(row.id, vectors[:3], 5)
        np.testing.assert_array_equal(seqs, want_seqs)
        np.testing.assert_allclose(scores, want_scores)
        with pytest.raises(InvalidRequest):  # a domain error crosses as itself
            await asyncio.to_thread(client.search, row.id, vectors[:1], 5, None, {"$bogus": 1})
        status = await client.status()
        assert status.workers == 1 and [i.vectors for i in status.indexes] == [20]


async def test_writes_from_two_workers_arriving_out_of_order_leave_the_index_as_sql_has_it(setup: Setup):
    rng = np.random.default_rng(1)
    async with setup.client() as first, setup.client() as second:
        row = collection(setup)
        await first.create_index(row.id)
        early = upsert(setup, row, [f"a{i}" for i in range(10)], rng.standard_normal((10, 8)))
        late = upsert(setup, row, ["a0", "a1", "b0"], rng.standard_normal((3, 8)))  # replaces two of them
        await asyncio.to_thread(second.apply, row.id, late)  # arrives first: the index catches up from SQL
        assert setup.engine.indexes.live()[0].position == late.position
        await asyncio.to_thread(first.apply, row.id, early)  # already reflected: skipped
        index = setup.engine.indexes.live()[0].index
        np.testing.assert_array_equal(index.ids(), np.sort(setup.store.all_seqs(row.id)))
        assert len(index) == 11
        # A write whose worker died after the commit (never applied) is caught up with by the next one.
        upsert(setup, row, ["c0"], rng.standard_normal((1, 8)))
        after = upsert(setup, row, ["c1"], rng.standard_normal((1, 8)))
        await asyncio.to_thread(first.apply, row.id, after)
        np.testing.assert_array_equal(index.ids(), np.sort(setup.store.all_seqs(row.id)))


async def test_an_index_dropped_by_another_worker_is_gone_for_this_one(setup: Setup):
    async with setup.client() as first, setup.client() as second:
        row = collection(setup)
        await first.create_index(row.id)
        assert await second.index_state(row.id) == "ready"  # remembered from now on
        setup.store.delete_collection(row.id)  # deleted from SQL first, then its index dropped
        await first.drop_index(row.id)
        with pytest.raises(IndexGone):
            await asyncio.to_thread(second.search, row.id, np.ones((1, 8), np.float32), 1)
        assert await second.index_state(row.id) is None  # forgotten, asked again


async def test_a_full_engine_queue_is_a_503_with_retry_after_and_a_cancelled_call_never_runs(setup: Setup):
    batcher = setup.engine.model("tiny").batcher
    encode = batcher._encode
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(sequences):
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.5)
        return encode(sequences)

    batcher._encode, batcher.max_pending = slow, 4
    async with setup.client() as client:
        with pytest.raises(Overloaded) as refused:
            await client.embed("tiny", [[2, 5]] * 5, key="t")
        assert refused.value.retry_after >= 1
        running = asyncio.ensure_future(client.embed("tiny", [[2, 5]], key="t"))
        await asyncio.wait_for(started.wait(), 10)  # in a forward pass now
        queued = asyncio.ensure_future(client.embed("tiny", [[2, 6], [2, 7]], key="t"))
        deadline = time.monotonic() + 10
        while batcher.pending < 2:  # the engine has queued it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        queued.cancel()
        deadline = time.monotonic() + 10
        while batcher.pending:  # the cancel crossed over and took it off the queue
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await running).shape == (1, 64)
        await asyncio.sleep(0.6)
        assert batcher.stats.sequences == 1  # the cancelled inputs never reached a forward pass


async def test_while_the_engine_is_down_calls_are_503_and_the_worker_reconnects(setup: Setup):
    async with setup.client() as client:
        row = collection(setup)
        await client.create_index(row.id)
        await setup.server.close()
        setup.server._server.close()
        await setup.server._server.wait_closed()
        deadline = time.monotonic() + 10
        while client.connected.is_set():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(Unavailable) as down:
            await client.embed("tiny", [[2, 5]], key="t")
        assert down.value.code == "engine_unavailable"
        assert client.model_status() == {"tiny": "loading"}
        with pytest.raises(Unavailable):
            await client.index_state(row.id)
        await setup.serve()  # "restarted"
        await asyncio.wait_for(client.connected.wait(), 10)
        await ready(client)
        assert (await client.embed("tiny", [[2, 5]], key="t")).shape == (1, 64)
        assert await client.index_state(row.id) == "ready"


async def test_a_collection_deleted_through_one_worker_is_gone_for_another(setup: Setup):
    """Two HTTP workers' domains (each with its own cache of collection rows) over one engine: after worker A
    deletes a collection that worker B has cached, B's next request to it is a 404, reads and writes alike (its
    cache said ready; SQL and the engine say gone, so B looks again); once A makes it again with another
    dimension, B serves the new one."""
    from service.api.app import build

    workers = [build(setup.settings, setup.registry, setup.database, (setup.address, setup.secret))
               for _ in range(2)]
    for services in workers:
        await services.engine.start()
    try:
        a, b = workers
        for services in workers:
            await ready(services.engine)
        await a.collections.create("t", "c", model=None, dimension=2, metric="cosine", index="Flat")
        vector = SimpleNamespace(id="x", text=None, vector=[1.0, 0.0], metadata=None)
        await b.documents.upsert("t", "c", [vector])
        assert (await b.collections.describe("t", "c")).indexed == 1  # B has the row cached now
        await a.collections.delete("t", "c")
        with pytest.raises(NotFound):
            await b.collections.describe("t", "c")
        with pytest.raises(NotFound):
            await b.documents.upsert("t", "c", [vector])
        await a.collections.create("t", "c", model=None, dimension=3, metric="cosine", index="Flat")
        assert (await b.collections.describe("t", "c")).dimension == 3
        with pytest.raises(InvalidRequest):  # B's view is the new collection's, not the old one's
            await b.documents.upsert("t", "c", [vector])
        # The same once B's engine connection has forgotten which indexes are ready (as after an engine restart):
        # B asks the engine to open its stale row's index, the engine finds no such collection in SQL.
        await a.collections.delete("t", "c")
        await a.collections.create("t", "c", model=None, dimension=2, metric="cosine", index="Flat")
        b.engine._ready.clear()
        await b.documents.upsert("t", "c", [vector])
        assert (await a.collections.describe("t", "c")).count == 1
    finally:
        for services in workers:
            await services.engine.stop()


async def test_unknown_models_and_collections_answer_as_in_one_process(setup: Setup):
    async with setup.client() as client:
        with pytest.raises(NotFound):
            client.model("nope")
        with pytest.raises(NotFound):
            await client.embed("nope", [[2]], key="t")
        assert await client.index_state(12345) is None
        with pytest.raises(IndexGone):
            await asyncio.to_thread(client.indexed, 12345)
        with pytest.raises(ValueError):
            client.check_index(8, "cosine", "NoSuchIndex")


@pytest.mark.parametrize("index", ["PCA8,Flat", "OPQ4,IVF4,PQ4", "IVF4,SQ4", "Flat,RFlat"])
async def test_an_index_milvus_cannot_map_is_a_400_through_a_worker_and_leaves_nothing(settings: Settings,
                                                                                       index: str):
    """On the Milvus backend, a FAISS string with no Milvus equivalent is refused by the engine process as
    the engine itself refuses it (a 400 naming `index`, not a 503 to retry), and no collection is left: the
    same name with a supported index is made afterwards."""
    from service.api.app import build

    setup = Setup(msgspec.structs.replace(settings, vector_backend="milvus"))
    await setup.engine.start()
    await setup.engine.models.wait_ready()
    await setup.serve()
    worker = build(setup.settings, setup.registry, setup.database, (setup.address, setup.secret))
    await worker.engine.start()
    try:
        await ready(worker.engine)
        with pytest.raises(InvalidRequest) as refused:
            await worker.collections.create("t", "c", model=None, dimension=8, metric="cosine", index=index)
        assert refused.value.param == "index" and "no Milvus equivalent" in refused.value.message
        assert "HNSW<M>" in refused.value.message  # names the supported ones
        assert setup.store.get_collection("t", "c") is None
        made = await worker.collections.create("t", "c", model=None, dimension=8, metric="cosine", index="Flat")
        assert made.index == "Flat" and made.status == "ready"
    finally:
        await worker.engine.stop()
        await setup.server.close()
        await setup.engine.stop()
        setup.database.dispose()


async def test_only_a_worker_with_the_secret_is_answered_and_the_engine_checks_every_call(setup: Setup):
    """A connection without this start's secret is closed before any frame of it is decoded; a worker's calls
    are held to the limits the HTTP layer documents; a forged Apply cannot make the engine skip a write."""
    from service.engine import protocol as p

    reader, writer = await p.connect(setup.address)
    writer.write(p.GREETING + bytes(32) + p.frame(p.Call(1, p.Status())))  # a wrong secret
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing answered
    writer.close()
    async with setup.client() as client:
        row = collection(setup)
        await client.create_index(row.id)
        vectors = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
        write = upsert(setup, row, [f"d{i}" for i in range(5)], vectors)
        for bad in (p.Search(row.id, p.Array.of(vectors[:1]), 10 ** 9, None),  # k past MAX_TOP_K
                    p.Search(row.id, p.Array.of(vectors[:1, :4]), 5, None),  # another dimension
                    p.Search(row.id, p.Array.of(vectors[:1].astype(np.float64)), 5, None),
                    p.Embed("tiny", [[2, 10 ** 9]], "t"),  # outside the vocabulary
                    p.Embed("tiny", [[]], "t"),
                    p.KeywordSearch(row.id, [], 5, None)):
            with pytest.raises(InvalidRequest):
                await client.call(bad)
        # A forged Apply (a position far ahead) only makes the engine catch up with SQL: the next real write
        # is still applied.
        await client.call(p.Apply(row.id, write.position + 1000))
        assert await asyncio.to_thread(client.indexed, row.id) == 5
        later = upsert(setup, row, ["late"], vectors[:1])
        await asyncio.to_thread(client.apply, row.id, later)
        assert await asyncio.to_thread(client.indexed, row.id) == 6
        with pytest.raises(ValueError):  # SQL still has it: the engine will not drop it
            await client.drop_index(row.id)


async def test_a_write_committed_while_the_engine_is_down_is_answered_and_searchable_once_it_is_back(setup: Setup):
    """The engine goes away between a write's SQL commit and its Apply: the write is acknowledged (it is in SQL,
    the source of truth), and once the engine is back this worker tells it, so the next search finds the write."""
    from service.api.app import build

    worker = build(setup.settings, setup.registry, setup.database, (setup.address, setup.secret))
    await worker.engine.start()
    try:
        await ready(worker.engine)
        await worker.collections.create("t", "c", model=None, dimension=2, metric="l2", index="Flat")
        real_upsert = worker.documents.store.upsert
        loop = asyncio.get_running_loop()

        def upsert_then_lose_the_engine(*args):
            committed = real_upsert(*args)
            asyncio.run_coroutine_threadsafe(setup.server.close(), loop).result(10)  # the engine "dies"
            return committed

        before = setup.store.get_collection("t", "c")
        worker.documents.store.upsert = upsert_then_lose_the_engine
        doc = SimpleNamespace(id="x", text=None, vector=[1.0, 0.0], metadata=None)
        assert await worker.documents.upsert("t", "c", [doc]) == (["x"], 0)  # acknowledged
        worker.documents.store.upsert = real_upsert
        setup.server._server.close()
        await setup.server._server.wait_closed()
        setup.engine.indexes.drop(before.id)  # a new engine that opened the index before the commit
        setup.engine.indexes.create(before)
        await setup.serve()
        await asyncio.wait_for(worker.engine.connected.wait(), 10)
        deadline = time.monotonic() + 10
        while True:
            found = await worker.search.search("t", "c", Query(field="vector", vectors=[[1.0, 0.0]], top_k=1))
            if found.hits[0]:
                break
            assert time.monotonic() < deadline, "the committed write never reached the engine"
            await asyncio.sleep(0.05)
        assert found.hits[0][0].document.id == "x"
    finally:
        await worker.engine.stop()


async def test_the_engine_drops_by_itself_an_index_whose_collection_sql_no_longer_has(setup: Setup):
    """A delete whose drop never reached the engine (the worker lost it mid-way) leaves no index behind for long:
    the engine's periodic pass drops what SQL no longer has, and keeps what it has."""
    kept, deleted = collection(setup, "kept"), collection(setup, "deleted")
    for row in (kept, deleted):
        await setup.engine.create_index(row.id)
    setup.store.delete_collection(deleted.id)
    await asyncio.to_thread(setup.engine._drop_deleted)
    assert await setup.engine.index_state(deleted.id) is None
    assert await setup.engine.index_state(kept.id) == "ready"
