"""The Merger: a lone item runs at once, newcomers during a run go together into the next one, and an
item whose caller went away is dropped before it runs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.domain.merging import Merger

pytestmark = pytest.mark.unit


class Recorder:
    """run(): records each run's items; the first run waits until released, so that others queue."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, key, items: list[str]) -> list:
        self.runs.append(list(items))
        if len(self.runs) == 1:
            self.started.set()
            assert self.release.wait(5)
        return [ValueError(item) if item.startswith("bad") else f"{key}:{item}" for item in items]


async def until(event: threading.Event) -> None:
    for _ in range(500):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError


async def test_a_lone_item_runs_at_once_and_later_ones_are_merged():
    run = Recorder()
    merger = Merger(run)
    first = asyncio.ensure_future(merger.submit("k", "a"))
    await until(run.started)  # a lone item: its run started with no one else waiting
    assert run.runs == [["a"]]
    others = [asyncio.ensure_future(merger.submit("k", item)) for item in ("b", "bad-c", "d")]
    gone = asyncio.ensure_future(merger.submit("k", "e"))
    elsewhere = asyncio.ensure_future(merger.submit("other", "f"))  # another key does not wait for "k"
    await asyncio.sleep(0.05)
    gone.cancel()
    run.release.set()
    assert await first == "k:a"
    assert await others[0] == "k:b" and await others[2] == "k:d"
    with pytest.raises(ValueError, match="bad-c"):  # an item's own error is that item's alone
        await others[1]
    assert await elsewhere == "other:f"
    assert sorted(map(sorted, run.runs)) == [["a"], ["b", "bad-c", "d"], ["f"]]  # "e" was dropped unrun
