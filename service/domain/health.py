"""Liveness and readiness: the models' states, the database answering, the collections set aside."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import Engine as Database
from sqlalchemy import text

from service.engine.engine import Engine

log = logging.getLogger("service.ready")

DATABASE_TIMEOUT = 2.0  # seconds readiness waits for SELECT 1


@dataclass(frozen=True)
class Readiness:
    models: dict[str, str]  # name -> loading | ready | error
    database: bool
    failed_collections: list[int]  # ids: each answers 503, the others serve, so the server stays ready

    @property
    def ready(self) -> bool:
        return self.database and all(status == "ready" for status in self.models.values())


class Health:
    def __init__(self, engine: Engine, database: Database) -> None:
        self.engine = engine
        self.database = database

    def models(self) -> dict[str, str]:
        return self.engine.model_status()

    async def readiness(self) -> Readiness:
        return Readiness(self.models(), await self._database_ok(), self.engine.failed_indexes())

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
