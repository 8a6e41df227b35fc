"""Liveness and readiness: the models' states, the database and the engine process answering, the HTTP
workers connected to it, the collections set aside."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine as Database
from sqlalchemy import text

from service.errors import Unavailable

if TYPE_CHECKING:
    from service.engine.engine import Engine

log = logging.getLogger("service.ready")

DATABASE_TIMEOUT = 2.0  # seconds readiness waits for SELECT 1
ENGINE_TIMEOUT = 2.0  # seconds readiness waits for the engine's status


@dataclass(frozen=True)
class Readiness:
    models: dict[str, str]  # name -> loading | ready | error
    database: bool
    failed_collections: list[int]  # ids: each answers 503, the others serve, so the server stays ready
    engine: bool  # the engine process answers (always, in one process)
    workers: int  # HTTP worker processes connected to the engine with every model ready (0 in one process)
    expected_workers: int

    @property
    def ready(self) -> bool:
        return (self.database and self.engine and self.workers >= self.expected_workers
                and all(status == "ready" for status in self.models.values()))


class Health:
    def __init__(self, engine: Engine, database: Database, workers: int = 0) -> None:
        self.engine = engine
        self.database = database
        self.workers = workers

    def models(self) -> dict[str, str]:
        return self.engine.model_status()

    async def readiness(self) -> Readiness:
        database = await self._database_ok()
        try:
            status = await asyncio.wait_for(self.engine.status(), ENGINE_TIMEOUT)
        except (Unavailable, TimeoutError):  # the engine process is down (being restarted) or stuck
            return Readiness(self.models(), database, [], False, 0, self.workers)
        return Readiness(self.models(), database, status.failed, True, status.workers, self.workers)

    async def _database_ok(self) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._select_one), DATABASE_TIMEOUT)
        except Exception as exc:  # TimeoutError included; the reason goes to the log, not to the client
            log.warning("readiness: the database did not answer SELECT 1: %s", type(exc).__name__, exc_info=exc)
            return False
        return True

    def _select_one(self) -> None:
        with self.database.connect() as conn:
            conn.execute(text("SELECT 1"))
