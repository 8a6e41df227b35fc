"""Dynamic batching on a real (tiny) Gemma 3 forward pass."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from service.engine.batcher import Batcher
from service.engine.encoder import Encoder
from service.engine.loader import load
from service.engine.registry import Registry
from service.errors import Unavailable
from benchmarks.tiny_model import WORDS

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def encoder(models_file: Path) -> Encoder:
    spec = Registry.load(models_file).get("tiny")
    return Encoder(load(spec, Path("unused"), torch.device("cpu"), torch.float32))


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 40))) for _ in range(n)]


async def test_concurrent_requests_share_a_forward_pass_and_match_unbatched(encoder: Encoder):
    sequences = encoder.tokenize(sentences(16))
    expected = np.concatenate([encoder.encode([s]) for s in sequences])
    batcher = Batcher(encoder.encode, encoder.dimension, max_wait=0.05)
    try:
        results = await asyncio.gather(*(batcher.embed([s]) for s in sequences))
    finally:
        await batcher.stop()
    np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5)
    assert batcher.stats.sequences == 16
    assert batcher.stats.forward_passes < 16
    assert max(batcher.stats.recent_batch_sizes) > 1


async def test_a_large_request_is_split_into_batches_by_token_budget(encoder: Encoder):
    sequences = encoder.tokenize(sentences(40, seed=1))
    expected = np.concatenate([encoder.encode([s]) for s in sequences])
    padded: list[int] = []

    def encode(batch: list[list[int]]) -> np.ndarray:
        padded.append(len(batch) * max(len(s) for s in batch))
        assert len(batch) <= 8
        return encoder.encode(batch)

    batcher = Batcher(encode, encoder.dimension, max_tokens=128, max_batch=8)
    try:
        result = await batcher.embed(sequences)
    finally:
        await batcher.stop()
    np.testing.assert_allclose(result, expected, atol=1e-5)
    assert len(padded) >= 5
    assert max(padded) <= 128


async def test_an_encoder_that_can_queue_gets_the_next_batch_before_the_last_is_read(encoder: Encoder):
    """Pipelining (CUDA graphs on a GPU): batch n+1 is submitted before batch n's vectors are waited for, and
    every request still gets its own vectors."""
    sequences = encoder.tokenize(sentences(24, seed=3))
    expected = np.concatenate([encoder.encode([s]) for s in sequences])
    events: list[str] = []

    def submit(batch: list[list[int]]):
        number = sum(event.startswith("submit") for event in events)
        events.append(f"submit {number}")

        def result() -> np.ndarray:
            events.append(f"result {number}")
            return encoder.encode(batch)
        return result

    batcher = Batcher(encoder.encode, encoder.dimension, max_batch=8, max_wait=0.05, submit=submit)
    try:
        result = await batcher.embed(sequences)
    finally:
        await batcher.stop()
    np.testing.assert_allclose(result, expected, atol=1e-5)
    assert events == ["submit 0", "submit 1", "result 0", "submit 2", "result 1", "result 2"]
    assert batcher.stats.forward_passes == 3 and batcher.stats.sequences == 24


async def test_sorting_by_length_keeps_padding_small():
    seen: list[list[int]] = []

    def encode(batch: list[list[int]]) -> np.ndarray:
        seen.append(sorted(len(s) for s in batch))
        return np.ones((len(batch), 2), dtype=np.float32)

    batcher = Batcher(encode, 2, max_batch=2, max_wait=0.05)
    lengths = [30, 2, 31, 3]
    try:
        await asyncio.gather(*(batcher.embed([[1] * n]) for n in lengths))
    finally:
        await batcher.stop()
    assert sorted(seen) == [[2, 3], [30, 31]]
    assert batcher.stats.padded_tokens == 2 * 3 + 2 * 31


async def test_full_queue_refuses_at_once_with_retry_after():
    def encode(batch: list[list[int]]) -> np.ndarray:
        return np.ones((len(batch), 2), dtype=np.float32)

    batcher = Batcher(encode, 2, max_pending=4, max_wait=0.2)
    try:
        first = asyncio.ensure_future(batcher.embed([[1]] * 4))
        await asyncio.sleep(0)  # queued, the worker still waiting for the batch to fill
        with pytest.raises(Unavailable) as refused:
            await batcher.embed([[1]])
        assert refused.value.code == "overloaded"
        assert refused.value.retry_after == 1
        assert (await first).shape == (4, 2)
        assert (await batcher.embed([[1]])).shape == (1, 2)  # accepted again once drained
    finally:
        await batcher.stop()


async def test_a_failing_forward_fails_its_requests_not_the_worker():
    calls = 0

    def encode(batch: list[list[int]]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return np.ones((len(batch), 2), dtype=np.float32)

    batcher = Batcher(encode, 2)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.embed([[1, 2]])
        assert (await batcher.embed([[1, 2]])).shape == (1, 2)
    finally:
        await batcher.stop()


async def test_out_of_memory_splits_the_batch():
    def encode(batch: list[list[int]]) -> np.ndarray:
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.array([[len(s), 0] for s in batch], dtype=np.float32)

    batcher = Batcher(encode, 2)
    try:
        result = await batcher.embed([[1] * n for n in range(1, 8)])
    finally:
        await batcher.stop()
    np.testing.assert_array_equal(result[:, 0], np.arange(1, 8))


@pytest.mark.integration
async def test_http_overload_is_503_with_retry_after(settings, models_file):
    import msgspec

    from tests.conftest import app_client

    async with app_client(msgspec.structs.replace(settings, queue_max_inputs=2, models="tiny")) as client:
        response = await client.post("/v1/embeddings", json={"model": "tiny", "input": ["a", "b", "c"]})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("patience, expected", [(0.25, [8, 8]), (0.0, None)])
async def test_under_load_the_next_pool_waits_for_the_last_pools_clients(encoder: Encoder, patience, expected):
    """Eight clients in a closed loop: after their batch they come back one by one (5 ms apart here).
    With patience the batcher waits for all eight (a fraction of the 200 ms forward) instead of
    running the first arrival alone and splitting the rest into small batches."""
    sequences = encoder.tokenize(sentences(8, seed=5))

    def slow_encode(batch: list[list[int]]) -> np.ndarray:  # a forward pass as slow as the 270M model's on a CPU
        time.sleep(0.2)
        return encoder.encode(batch)

    batcher = Batcher(slow_encode, encoder.dimension, max_wait=0.002, patience=patience)

    async def client(i: int) -> np.ndarray:
        await asyncio.sleep(0.005 * i)
        return await batcher.embed([sequences[i]])

    try:
        await asyncio.gather(*(batcher.embed([s]) for s in sequences))
        await asyncio.gather(*(client(i) for i in range(8)))
    finally:
        await batcher.stop()
    sizes = list(batcher.stats.recent_batch_sizes)
    if expected is not None:
        assert sizes == expected
    else:
        assert sizes[0] == 8 and len(sizes) > 2  # without patience the returning clients are split up


class Recorder:
    """An ``encode`` that records the sequences of each forward pass and takes ``seconds`` for one."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.calls: list[list[list[int]]] = []

    def __call__(self, batch: list[list[int]]) -> np.ndarray:
        self.calls.append(batch)
        time.sleep(self.seconds)
        return np.ones((len(batch), 2), dtype=np.float32)

    def first_call_with(self, ids: list[int]) -> int:
        return next(i for i, batch in enumerate(self.calls) if ids in batch)


async def test_keys_take_turns_in_a_pool_keeping_each_keys_order():
    encode = Recorder(seconds=0.01)
    batcher = Batcher(encode, 2, max_tokens=8, max_batch=1, max_wait=0.05)  # pools of 8 four-token sequences
    big = [[1, 1, 1, i] for i in range(20)]
    small = [[2, 2, 2, i] for i in range(3)]
    try:
        await asyncio.gather(batcher.embed(big, key="a"), batcher.embed(small, key="b"))
    finally:
        await batcher.stop()
    assert [encode.first_call_with(ids) for ids in small] == [1, 3, 5]  # a, b, a, b, a, b, a, a, then the rest of a
    assert [batch[0] for batch in encode.calls if batch[0][0] == 1] == big


async def test_a_small_request_waits_for_the_batch_being_computed_not_for_a_big_one():
    """Key b arrives while the pool of key a's 40 sequences runs (one forward pass each): it joins the
    pool and runs next, instead of after all of a's."""
    encode = Recorder()
    batcher = Batcher(encode, 2, max_batch=1)
    try:
        big = asyncio.ensure_future(batcher.embed([[1] * 4 for _ in range(40)], key="a"))
        await asyncio.sleep(0.02)  # a's pool is taken, its first forward pass under way
        assert encode.calls
        await batcher.embed([[2]], key="b")
        assert encode.first_call_with([2]) <= 2
        assert len(encode.calls) <= 3
        await big
    finally:
        await batcher.stop()
    assert len(encode.calls) == 41


async def test_a_cancelled_call_leaves_the_queue_at_once_and_never_runs():
    encode = Recorder()
    batcher = Batcher(encode, 2, max_tokens=8, max_batch=1, max_pending=20)  # a pool holds 8 of the 20
    try:
        call = asyncio.ensure_future(batcher.embed([[1, 1, 1, i] for i in range(20)], key="a"))
        await asyncio.sleep(0.02)  # the first forward pass under way
        assert batcher.pending == 12
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert batcher.pending == 0
        assert (await batcher.embed([[2]] * 20, key="b")).shape == (20, 2)  # room for a full queue again
    finally:
        await batcher.stop()
    assert [batch[0][0] for batch in encode.calls] == [1] + [2] * 20  # only the pass under way ran for a
