"""Dynamic batching: the only door to a model.

Concurrent ``await batcher.embed(sequences)`` calls are queued per sequence. One worker takes a
pool of queued sequences in arrival order (a few batches' worth of tokens), sorts the pool by
length so that padding stays small, cuts it into batches bounded by a padded-token budget and a
batch size, and runs them one after another on a single inference thread. A request with many
inputs is thereby split across batches, and short requests arriving meanwhile wait for at most one
pool. The queue is bounded: past ``max_pending`` sequences, :meth:`embed` refuses at once with 503.

Before taking a pool the worker gives concurrent requests ``max_wait`` to join. Under load it waits
a little longer for as many sequences as the last pool held: clients that just got their answers
are usually about to send the next request, and taking the first few of them alone would split
one batch's worth of work into several small, slow ones. That wait is bounded by ``patience``
times the last pool's forward time, so a client that went away costs little; it applies only right
after a pool (not to a request arriving after a pause), and a lone client (a last pool of one) does
not wait at all.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from service.errors import Unavailable

log = logging.getLogger("service.batcher")


@dataclass(eq=False)
class _Job:
    future: asyncio.Future[np.ndarray]
    result: np.ndarray
    remaining: int


@dataclass(slots=True)
class _Item:
    job: _Job
    row: int
    ids: list[int]


@dataclass
class BatcherStats:
    forward_passes: int = 0
    sequences: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    recent_batch_sizes: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=1024))


class Batcher:
    def __init__(
        self,
        encode: Callable[[list[list[int]]], np.ndarray],
        dimension: int,
        *,
        max_tokens: int = 16384,
        max_batch: int = 256,
        max_wait: float = 0.002,
        patience: float = 0.25,
        max_pending: int = 16384,
        name: str = "model",
    ) -> None:
        self._encode = encode
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.patience = patience
        self.max_pending = max_pending
        self.name = name
        self.stats = BatcherStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_tokens = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encoder-{name}")
        self._worker: asyncio.Task[None] | None = None
        self._last_pool = 0  # sequences in the last pool...
        self._last_forward = 0.0  # ...the seconds its forward passes took...
        self._last_done = 0.0  # ...and when they ended (monotonic)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue:
            job = self._queue.popleft().job
            if not job.future.done():
                job.future.set_exception(Unavailable("The server is shutting down.", code="shutting_down"))
        self._executor.shutdown(wait=True)

    async def embed(self, sequences: list[list[int]]) -> np.ndarray:
        """Embed token-id sequences; returns [len(sequences), dimension] float32, L2-normalised."""
        if not sequences:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if len(self._queue) + len(sequences) > self.max_pending:
            raise Unavailable(
                f"The {self.name} encoder queue is full ({len(self._queue)} inputs waiting); retry shortly.",
                retry_after=1,
            )
        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future(), np.empty((len(sequences), self.dimension), dtype=np.float32), len(sequences))
        for row, ids in enumerate(sequences):
            self._queue.append(_Item(job, row, ids))
            self._queued_tokens += len(ids)
        self._wakeup.set()
        self.start()
        return await job.future

    def _take_pool(self) -> list[_Item]:
        """Queued items in arrival order, up to a few batches' worth of tokens; cancelled jobs dropped."""
        pool: list[_Item] = []
        tokens = 0
        budget = 4 * self.max_tokens
        while self._queue and (not pool or tokens + len(self._queue[0].ids) <= budget):
            item = self._queue.popleft()
            self._queued_tokens -= len(item.ids)
            if item.job.future.done():
                continue
            pool.append(item)
            tokens += len(item.ids)
        return pool

    def _split(self, pool: list[_Item]) -> list[list[_Item]]:
        pool.sort(key=lambda item: len(item.ids))
        batches: list[list[_Item]] = []
        current: list[_Item] = []
        for item in pool:  # ascending length: the item being added is the batch's longest
            if current and (len(current) >= self.max_batch or (len(current) + 1) * len(item.ids) > self.max_tokens):
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
        return batches

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            idle = not self._queue
            if idle:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather(idle)
            pool = self._take_pool()
            self._last_pool = len(pool)
            began = time.monotonic()
            for batch in self._split(pool):
                batch = [item for item in batch if not item.job.future.done()]
                if not batch:
                    continue
                sequences = [item.ids for item in batch]
                try:
                    vectors = await loop.run_in_executor(self._executor, self._encode_safely, sequences)
                except Exception as exc:  # a failed forward fails its requests, not the worker
                    log.exception("forward pass of %d sequences failed", len(batch))
                    for item in batch:
                        if not item.job.future.done():
                            item.job.future.set_exception(exc)
                    continue
                self._record(sequences)
                for item, vector in zip(batch, vectors):
                    job = item.job
                    if job.future.done():
                        continue
                    job.result[item.row] = vector
                    job.remaining -= 1
                    if job.remaining == 0:
                        job.future.set_result(job.result)
            self._last_done = time.monotonic()
            self._last_forward = self._last_done - began

    async def _gather(self, idle: bool) -> None:
        """Let concurrent requests join the next pool (see the module's docstring), unless a batch is full."""
        now = time.monotonic()
        # After idling, concurrent requests may be on their way, unless the last pool was a lone request.
        deadline = now + self.max_wait if idle and self._last_pool != 1 else now
        # Clients coming back from the last pool arrive within about one forward's time of its end.
        returning = now - self._last_done <= self._last_forward
        patient_until = now + self.patience * self._last_forward if returning else now
        while self._queued_tokens < self.max_tokens and len(self._queue) < self.max_batch:
            now = time.monotonic()
            until = patient_until if len(self._queue) < self._last_pool else deadline
            if now >= max(deadline, until):
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(deadline, until) - now)
            except TimeoutError:
                break

    def _encode_safely(self, sequences: list[list[int]]) -> np.ndarray:
        """Run a batch; on an out-of-memory error, run its halves instead."""
        try:
            return self._encode(sequences)
        except Exception as exc:
            if len(sequences) < 2 or "out of memory" not in str(exc).lower():
                raise
            log.warning("out of memory on a batch of %d; splitting it", len(sequences))
            half = len(sequences) // 2
            return np.concatenate([self._encode_safely(sequences[:half]), self._encode_safely(sequences[half:])])

    def _record(self, sequences: list[list[int]]) -> None:
        stats = self.stats
        stats.forward_passes += 1
        stats.sequences += len(sequences)
        stats.real_tokens += sum(len(s) for s in sequences)
        stats.padded_tokens += len(sequences) * max(len(s) for s in sequences)
        stats.recent_batch_sizes.append(len(sequences))
