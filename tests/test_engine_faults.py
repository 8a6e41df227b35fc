"""Faults injected into the engine: a batcher worker that dies, requests past their deadline, an index lock
held too long. Each is a 503 in OpenAI's shape for the requests it touches, never a hang, and the
engine serves again afterwards."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import numpy as np
import pytest

from service.engine.batcher import Batcher
from service.engine.rwlock import LockTimeout, RWLock
from service.errors import Unavailable
from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.unit


def ones(batch: list[list[int]]) -> np.ndarray:
    return np.ones((len(batch), 2), dtype=np.float32)


async def test_a_dead_worker_fails_its_requests_with_a_503_and_is_replaced():
    batcher = Batcher(ones, 2)
    split = batcher._split
    broken = True

    def split_once(pool):  # a bug outside any forward pass kills the worker
        if broken:
            raise RuntimeError("bug in the pool logic")
        return split(pool)

    batcher._split = split_once
    try:
        with pytest.raises(Unavailable) as failed:
            await asyncio.wait_for(batcher.embed([[1, 2]]), 5)
        assert failed.value.code == "encoder_restarted"
        broken = False
        assert (await asyncio.wait_for(batcher.embed([[3]]), 5)).shape == (1, 2)  # a new worker serves
        assert batcher.stats.restarts == 1
    finally:
        await batcher.stop()


@pytest.mark.integration
async def test_over_http_a_dead_worker_is_a_503_then_the_encoder_serves_again(settings):
    from tests.conftest import app_client

    async with app_client(msgspec.structs.replace(settings, models="tiny")) as client:
        batcher = client.app.state.services.engine.served_models()["tiny"].batcher
        split = batcher._split
        batcher._split = lambda pool: (_ for _ in ()).throw(RuntimeError("bug"))
        response = await client.post("/v1/embeddings", json={"model": "tiny", "input": "hello"})
        assert_error(response, 503, code="encoder_restarted")
        batcher._split = split
        assert (await client.post("/v1/embeddings", json={"model": "tiny", "input": "hello"})).status_code == 200


@pytest.mark.integration
async def test_a_request_past_the_engine_deadline_is_a_503_and_leaves_the_queue(settings):
    from tests.conftest import app_client

    async with app_client(msgspec.structs.replace(settings, models="tiny", engine_deadline_seconds=0.3)) as client:
        batcher = client.app.state.services.engine.served_models()["tiny"].batcher
        encode = batcher._encode
        batcher._encode = lambda batch: (time.sleep(1.0), encode(batch))[1]  # a forward far too slow
        started = time.monotonic()
        responses = await asyncio.gather(*(client.post("/v1/embeddings", json={"model": "tiny", "input": f"t {i}"})
                                           for i in range(3)))
        assert time.monotonic() - started < 5
        for response in responses:
            assert_error(response, 503, code="engine_timeout")
            assert response.headers["retry-after"] == "1"
        batcher._encode = encode
        await asyncio.sleep(1.2)  # the forward under way ends; nothing else was left queued
        assert batcher.pending == 0
        assert (await client.post("/v1/embeddings", json={"model": "tiny", "input": "hello"})).status_code == 200


def test_an_index_lock_held_past_the_deadline_is_a_503_not_a_hang():
    lock = RWLock()
    held, release = threading.Event(), threading.Event()

    def write():
        with lock.write():
            held.set()
            release.wait(5)

    writer = threading.Thread(target=write)
    writer.start()
    held.wait(5)
    with pytest.raises(LockTimeout) as timed_out:
        with lock.read(0.1):
            pass
    assert timed_out.value.code == "engine_timeout" and isinstance(timed_out.value, Unavailable)
    release.set()
    writer.join(5)
    with lock.read(0.1):
        pass


def test_searches_pass_a_snapshots_copy_even_while_a_write_waits_for_it():
    """The copy of a snapshot (a background read) holds writes back, not searches: a search arriving while a
    write waits behind the copy goes on at once; without the copy, writers still go first."""
    lock = RWLock()
    copying, copied = threading.Event(), threading.Event()
    order: list[str] = []

    def snapshot():
        with lock.read(5, background=True):
            copying.set()
            copied.wait(5)
            order.append("copy done")

    def write():
        with lock.write(5):
            order.append("write")

    threads = [threading.Thread(target=snapshot)]
    threads[0].start()
    copying.wait(5)
    threads.append(threading.Thread(target=write))
    threads[1].start()
    while not lock._writers_waiting:
        time.sleep(0.001)
    with lock.read(0.5):  # would time out if it queued behind the waiting write
        order.append("search")
    copied.set()
    for thread in threads:
        thread.join(5)
    assert order == ["search", "copy done", "write"]
    # An ordinary reader holding the lock: a search arriving behind a waiting writer waits for the write.
    reading, done = threading.Event(), threading.Event()

    def long_search():
        with lock.read(5):
            reading.set()
            done.wait(5)

    searcher = threading.Thread(target=long_search)
    searcher.start()
    reading.wait(5)
    writer = threading.Thread(target=write)
    writer.start()
    while not lock._writers_waiting:
        time.sleep(0.001)
    with pytest.raises(LockTimeout):
        with lock.read(0.1):
            pass
    done.set()
    searcher.join(5)
    writer.join(5)
