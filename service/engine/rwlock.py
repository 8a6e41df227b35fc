"""A readers-writer lock for threads: many searches at once, one write alone, with deadlines.

Searches and writes of an index run in worker threads, so this is a ``threading`` lock. Writers go
first: once one waits, new readers wait behind it, so a stream of searches cannot starve the writes.
Except behind a *background* reader (a snapshot taking its copy of the index): a writer waiting on
one cannot go before it ends anyway, so searches keep passing meanwhile, and a snapshot never stalls
them. Every wait has a deadline: past it, :class:`LockTimeout` (a 503 to the client).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import Overloaded


class LockTimeout(Overloaded):
    code = "engine_timeout"


class RWLock:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers = 0
        self._background = 0  # readers among them that writers wait for but searches may pass
        self._writer = False
        self._writers_waiting = 0

    def _wait(self, ready, timeout: float | None) -> None:
        if not self._changed.wait_for(ready, timeout):
            raise LockTimeout(f"The index was busy for more than {timeout:g} s; retry shortly.")

    @contextmanager
    def read(self, timeout: float | None = None, *, background: bool = False) -> Iterator[None]:
        with self._changed:
            if background:  # yields to waiting writers like a search, but does not hold searches back
                self._wait(lambda: not self._writer and not self._writers_waiting, timeout)
                self._background += 1
            else:
                self._wait(lambda: not self._writer and (not self._writers_waiting or self._background), timeout)
            self._readers += 1
        try:
            yield
        finally:
            with self._changed:
                self._readers -= 1
                self._background -= background
                self._changed.notify_all()

    @contextmanager
    def write(self, timeout: float | None = None) -> Iterator[None]:
        with self._changed:
            self._writers_waiting += 1
            try:
                self._wait(lambda: not self._writer and not self._readers, timeout)
            finally:
                self._writers_waiting -= 1
                self._changed.notify_all()  # readers held back by this writer (if it gave up)
            self._writer = True
        try:
            yield
        finally:
            with self._changed:
                self._writer = False
                self._changed.notify_all()
