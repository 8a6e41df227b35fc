"""Index snapshots in the background, stalling nothing.

Writes are durable in SQL the moment they are acknowledged; a snapshot only shortens the replay on the
next start. It is taken in two steps: a consistent in-memory copy of the index (``VectorIndex.freeze``:
a memory copy, fast) under a *background* read of the index lock, which searches pass freely and a
write waits for only as long as the copy takes; then the file is written (temp file, fsync, rename)
with no lock held while the index goes on changing. The file records the position it reflects; the
removals it covers are then forgotten in SQL. A collection whose last file took T seconds to write is
not snapshotted again for ``SPACING`` x T (the disk has other work to do).
"""

from __future__ import annotations

import asyncio
import logging
import time

from service.engine.indexes import Indexes, LiveIndex

log = logging.getLogger("service.engine")

SPACING = 10


class Snapshots:
    def __init__(self, indexes: Indexes) -> None:
        self.indexes = indexes

    def save(self, live: LiveIndex) -> bool:
        """Snapshot ``live`` if it moved on since its last snapshot (in a worker thread); whether it did."""
        with live.lock.read(self.indexes.deadline, background=True):
            position = live.position
            if position == live.saved_position:
                return False
            frozen = live.index.freeze(position)
        began = time.monotonic()
        frozen.write(self.indexes.path(live.row.id))
        live.next_snapshot = time.monotonic() + SPACING * (time.monotonic() - began)
        live.saved_position = position
        live.snapshots += 1
        self.indexes.store.prune_removals(live.row.id, position)
        return True

    async def save_all(self, periodic: bool = False) -> None:
        for live in self.indexes.live():
            if periodic and time.monotonic() < live.next_snapshot:
                continue
            try:
                await asyncio.to_thread(self.save, live)
            except Exception:
                log.exception("snapshot of collection %s/%s failed", live.row.tenant, live.row.name)
