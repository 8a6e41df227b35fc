"""Dynamic batching: the only door to a model.

Concurrent ``await batcher.embed(sequences, key=tenant)`` calls are queued per sequence, in one queue
per fairness key. One worker takes a pool of queued sequences (a few batches' worth of tokens)
round-robin across keys, one sequence from each key in turn and in arrival order within a key, sorts
the pool by length so that padding stays small, cuts it into batches bounded by a padded-token budget
and a batch size, and runs them one after another on a single inference thread. A request with many
inputs is thereby split across batches, and it cannot hold the encoder for itself: another key's
request is in the next pool with it. Better still, between two batches of a pool, keys with nothing
in it yet may join it (once per pool, and up to a second pool's worth of tokens, so that everything
in a pool still runs within it and nothing starves): a short request from another tenant waits for
the batch being computed now, not for the rest of a huge request queued before it. The queue is
bounded: past ``max_pending`` sequences, :meth:`embed` refuses at once with 503.

The worker is supervised: if it dies (a bug outside a forward pass, which only fails its own batch),
the requests of the pool it held get a 503 and a new worker takes over the queue.

A cancelled :meth:`embed` (its client went away, see service/api/disconnect.py) takes its sequences
off the queue at once, so they neither count as pending nor reach a forward pass; those already in
the pool being run are skipped before each batch.

Where the encoder can queue a forward pass without waiting for it (``submit``: CUDA graphs on a GPU),
the batches of a pool are pipelined: batch n+1 is padded and queued while batch n runs, and only then
are batch n's vectors waited for. Elsewhere each batch runs to its end before the next.

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
from typing import Callable, Union

import numpy as np

from service.errors import Overloaded, Unavailable

log = logging.getLogger("service.batcher")

SHARED_KEY = ""  # the fairness key of callers that give none: they share one queue
Forward = Union[np.ndarray, Callable[[], np.ndarray]]  # a batch's vectors, or what waits for them
POOL_BATCHES = 4  # a pool holds this many batches' worth of tokens; with the keys that join it, twice that


@dataclass(eq=False)
class _Job:
    future: asyncio.Future[np.ndarray]
    result: np.ndarray
    remaining: int
    key: str


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
    restarts: int = 0  # workers that died and were replaced
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
        submit: Callable[[list[list[int]]], Callable[[], np.ndarray]] | None = None,
    ) -> None:
        self._encode = encode
        self._submit = submit
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.patience = patience
        self.max_pending = max_pending
        self.name = name
        self.stats = BatcherStats()
        # One queue per key with sequences waiting; the dict's order is the round-robin's: a key goes
        # to the end each time a sequence is taken from it.
        self._queues: dict[str, collections.deque[_Item]] = {}
        self._pending = 0
        self._queued_tokens = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"encoder-{name}")
        self._worker: asyncio.Task[None] | None = None
        self._running: list[_Item] = []  # the pool the worker is on (failed with a 503 if it dies)
        self._last_pool = 0  # sequences in the last pool...
        self._last_forward = 0.0  # ...the seconds its forward passes took...
        self._last_done = 0.0  # ...and when they ended (monotonic)

    @property
    def pending(self) -> int:
        """Sequences queued, not yet in a pool."""
        return self._pending

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")
            self._worker.add_done_callback(self._supervise)

    def _supervise(self, worker: asyncio.Task[None]) -> None:
        """A worker that died fails the requests it held (503) and is replaced; one stopped is not."""
        if worker.cancelled() or worker is not self._worker:
            return
        log.error("the %s batcher's worker died; restarting it", self.name, exc_info=worker.exception())
        self.stats.restarts += 1
        for item in self._running:
            if not item.job.future.done():
                item.job.future.set_exception(
                    Unavailable(f"The {self.name} encoder failed while serving this request; retry.",
                                code="encoder_restarted"))
        self._running = []
        self._worker = None
        if self._pending:
            self.start()

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for queue in self._queues.values():
            for item in queue:
                if not item.job.future.done():
                    item.job.future.set_exception(Unavailable("The server is shutting down.", code="shutting_down"))
        self._queues.clear()
        self._pending = self._queued_tokens = 0
        self._executor.shutdown(wait=True)

    async def embed(self, sequences: list[list[int]], *, key: str = SHARED_KEY,
                    timeout: float | None = None) -> np.ndarray:
        """Embed token-id sequences; returns [len(sequences), dimension] float32, L2-normalised.

        ``key`` is the caller for fair sharing (the tenant): keys take turns in every pool. Past
        ``timeout`` seconds the call fails with a 503 ``engine_timeout`` and its inputs leave the queue
        (a timer on the call's future: no task of its own)."""
        if not sequences:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._pending + len(sequences) > self.max_pending:
            raise Overloaded(
                f"The {self.name} encoder queue is full ({self._pending} inputs waiting); retry shortly.",
                retry_after=1,
            )
        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future(), np.empty((len(sequences), self.dimension), dtype=np.float32),
                   len(sequences), key)
        queue = self._queues.setdefault(key, collections.deque())
        queue.extend(_Item(job, row, ids) for row, ids in enumerate(sequences))
        self._pending += len(sequences)
        self._queued_tokens += sum(len(ids) for ids in sequences)
        self._wakeup.set()
        self.start()
        timer = loop.call_later(timeout, self._expire, job, timeout) if timeout is not None else None
        try:
            return await job.future
        finally:
            if timer is not None:
                timer.cancel()
            if job.remaining:  # cancelled, failed or past its deadline: what is still queued must not run
                self._withdraw(job)

    def _expire(self, job: _Job, timeout: float) -> None:
        if not job.future.done():
            job.future.set_exception(Overloaded(
                f"The {self.name} encoder did not answer within {timeout:g} s; retry shortly.", code="engine_timeout"))

    def _withdraw(self, job: _Job) -> None:
        """Take a call's queued sequences off its key's queue, so that they neither run nor count as pending."""
        queue = self._queues.get(job.key)
        if queue is None:
            return
        kept = [item for item in queue if item.job is not job]
        self._pending -= len(queue) - len(kept)
        self._queued_tokens -= sum(len(item.ids) for item in queue if item.job is job)
        if kept:
            self._queues[job.key] = collections.deque(kept)  # keeps the key's turn
        else:
            del self._queues[job.key]

    def _take(self, budget: int, tokens: int = 0, skip: frozenset[str] = frozenset()) -> list[_Item]:
        """Queued items round-robin across the keys not in ``skip`` (arrival order within a key) until
        ``tokens`` plus theirs would pass ``budget`` (the first item of an empty pool always fits)."""
        pool: list[_Item] = []
        turns = collections.deque(key for key in self._queues if key not in skip)
        while turns:
            key = turns.popleft()
            queue = self._queues[key]
            item = queue[0]
            if tokens + len(item.ids) > budget and tokens:
                break  # this key's turn comes first in the next pool
            queue.popleft()
            self._pending -= 1
            self._queued_tokens -= len(item.ids)
            del self._queues[key]
            if queue:
                self._queues[key] = queue  # to the end of the round-robin
                turns.append(key)
            if item.job.future.done():  # cancelled or failed, its caller not yet resumed to withdraw it
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
        while True:
            idle = not self._pending
            if idle:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather(idle)
            began = time.monotonic()
            self._running = self._take(POOL_BATCHES * self.max_tokens)
            self._last_pool = await self._run_pool(self._running)
            self._running = []
            self._last_done = time.monotonic()
            self._last_forward = self._last_done - began

    async def _run_pool(self, pool: list[_Item]) -> int:
        """Run a pool's batches; between two, keys with nothing in it yet join it (see the module's
        docstring). Returns how many sequences the pool held in the end."""
        keys = {item.job.key for item in pool}
        tokens = sum(len(item.ids) for item in pool)
        held = len(pool)
        batches = self._split(pool)
        running: tuple[list[_Item], Forward] | None = None
        while batches:
            started = await self._start(batches.pop(0))
            if running is not None:  # the next batch is queued behind it: now wait for this one
                await self._finish(*running)
                running = None
            if started is not None and isinstance(started[1], np.ndarray):  # ran to its end (eager): hand it out
                await self._finish(*started)
            else:
                running = started
            joined = self._take(2 * POOL_BATCHES * self.max_tokens, tokens, frozenset(keys)) if batches else []
            if joined:
                keys.update(item.job.key for item in joined)
                tokens += sum(len(item.ids) for item in joined)
                held += len(joined)
                batches = self._split([item for batch in batches for item in batch] + joined)
                self._running = self._running + joined
        if running is not None:
            await self._finish(*running)
        return held

    async def _start(self, batch: list[_Item]) -> tuple[list[_Item], Forward] | None:
        """Start a forward pass over the batch's live items (run it, unless the encoder can queue it); a
        failure fails their requests, not the worker."""
        batch = [item for item in batch if not item.job.future.done()]
        if not batch:
            return None
        try:
            return batch, await self._in_executor(self._submit_safely, [item.ids for item in batch])
        except Exception as exc:
            self._fail(batch, exc)
            return None

    async def _finish(self, batch: list[_Item], forward: Forward) -> None:
        """Wait for a started batch's vectors and hand each to its request."""
        try:
            vectors = forward if isinstance(forward, np.ndarray) else await self._in_executor(forward)
        except Exception as exc:
            self._fail(batch, exc)
            return
        sequences = [item.ids for item in batch]
        self._record(sequences)
        for item, vector in zip(batch, vectors):
            job = item.job
            if job.future.done():
                continue
            job.result[item.row] = vector
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.result)

    async def _gather(self, idle: bool) -> None:
        """Let concurrent requests join the next pool (see the module's docstring), unless a batch is full."""
        now = time.monotonic()
        # After idling, concurrent requests may be on their way, unless the last pool was a lone request.
        deadline = now + self.max_wait if idle and self._last_pool != 1 else now
        # Clients coming back from the last pool arrive within about one forward's time of its end.
        returning = now - self._last_done <= self._last_forward
        patient_until = now + self.patience * self._last_forward if returning else now
        while self._queued_tokens < self.max_tokens and self._pending < self.max_batch:
            now = time.monotonic()
            until = patient_until if self._pending < self._last_pool else deadline
            if now >= max(deadline, until):
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(deadline, until) - now)
            except TimeoutError:
                break

    def _in_executor(self, fn: Callable, *args: object):
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _fail(self, batch: list[_Item], exc: Exception) -> None:
        log.error("forward pass of %d sequences failed", len(batch), exc_info=exc)
        for item in batch:
            if not item.job.future.done():
                item.job.future.set_exception(exc)

    def _submit_safely(self, sequences: list[list[int]]) -> Forward:
        """Queue a batch where the encoder can (an out-of-memory error: run it in halves instead), else run it."""
        if self._submit is not None:
            try:
                return self._submit(sequences)
            except Exception as exc:
                if "out of memory" not in str(exc).lower():
                    raise
        return self._encode_safely(sequences)

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
