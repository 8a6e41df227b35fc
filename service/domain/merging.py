"""Concurrent work on one key (a collection), merged: the encoder's batching, for searches.

Each key has a queue of waiting items. When nothing runs for the key, the first item to arrive is run
at once: a lone client never waits for company. While a merged run is in its worker thread, newcomers
queue, and the next run takes them all. ``run(key, items)`` (called in a worker thread) answers each
item, with a result or an exception of its own. An item whose caller went away (its future cancelled)
before its run is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class Merger(Generic[Item]):
    def __init__(self, run: Callable[[Hashable, list[Item]], list[Any]]) -> None:
        self._run = run
        self._queues: dict[Hashable, list[tuple[Item, asyncio.Future]]] = {}
        self._running: dict[Hashable, asyncio.Task[None]] = {}  # the loop keeps only weak references

    async def submit(self, key: Hashable, item: Item) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((item, future))
        if key not in self._running:
            self._running[key] = asyncio.get_running_loop().create_task(self._drain(key))
        return await future

    async def _drain(self, key: Hashable) -> None:
        try:
            while queued := self._queues.pop(key, None):
                live = [(item, future) for item, future in queued if not future.done()]
                if not live:
                    continue
                try:
                    answers = await asyncio.to_thread(self._run, key, [item for item, _ in live])
                except Exception as exc:  # a failure of the run itself fails every item in it
                    answers = [exc] * len(live)
                for (_, future), answer in zip(live, answers):
                    if future.done():
                        continue
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            del self._running[key]
