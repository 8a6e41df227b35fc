"""Schema upgrades through Alembic, the only way the schema is created or changed.

The scripts and their ``alembic.ini`` are the package ``service.migrations`` (the source tree's
``migrations/`` folder, mapped into the package by pyproject.toml), found through the import system:
the same in a checkout, an editable install and an installed wheel.

Every process migrates on start (``serve``, ``migrate``, ``keys create``...), so several may start
at once on a fresh database: each runs Alembic under one lock per database, and the ones that
waited find the schema at head and do nothing. SQLite: ``flock`` on ``<db>.migrate.lock`` beside
the database file; PostgreSQL: an advisory lock of the migration's own transaction. Both go with
the holder, even when it is killed. Nobody waits forever: past ``lock_timeout`` seconds,
:class:`MigrationLockTimeout`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

from service.store.db import sqlite_path

LOCK_TIMEOUT = 60.0  # seconds a process waits for another one's migrations
_POLL = 0.05  # seconds between tries: the locks are taken without blocking, so the deadline holds
ADVISORY_LOCK_KEY = 0x656D6265645F6D67  # "embed_mg": any constant, the same in every process


class MigrationLockTimeout(RuntimeError):
    """Another process held the migration lock for longer than the deadline."""


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config(str(resources.files("service.migrations") / "alembic.ini"))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head", *, lock_timeout: float = LOCK_TIMEOUT) -> None:
    with _migrating(engine, lock_timeout) as config:
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
    with _migrating(engine, lock_timeout) as config:
        command.downgrade(config, revision)


@contextlib.contextmanager
def _migrating(engine: Engine, lock_timeout: float) -> Iterator[Config]:
    """Alembic's configuration on one transaction of ``engine`` that holds the migration lock."""
    config = alembic_config(engine)
    path = sqlite_path(engine.url)
    with _file_lock(path + ".migrate.lock", lock_timeout) if path else contextlib.nullcontext():
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                _advisory_lock(connection, lock_timeout)
            config.attributes["connection"] = connection
            yield config


@contextlib.contextmanager
def _file_lock(path: str, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``. The file stays: deleting it would let two processes each
    lock a different file of the same name."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _wait_for(lambda: _try_flock(fd), timeout, path)
        yield  # closing the file releases the lock
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _advisory_lock(connection: Connection, timeout: float) -> None:
    """A transaction-level advisory lock: released at commit or rollback, with the migration's DDL.
    Tried rather than awaited, so the deadline needs no ``lock_timeout`` that would also bound the DDL."""
    query = text("SELECT pg_try_advisory_xact_lock(:key)").bindparams(key=ADVISORY_LOCK_KEY)
    _wait_for(lambda: connection.execute(query).scalar_one(), timeout, f"advisory lock {ADVISORY_LOCK_KEY}")


def _wait_for(take: Callable[[], bool], timeout: float, lock: str) -> None:
    deadline = time.monotonic() + timeout
    while not take():
        if time.monotonic() >= deadline:
            raise MigrationLockTimeout(
                f"another process is still migrating the database after {timeout:g} s (it holds {lock}); "
                "try again once it has finished"
            )
        time.sleep(_POLL)
