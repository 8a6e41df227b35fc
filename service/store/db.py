"""Database engine: SQLite (embedded default) or PostgreSQL, configured for durable commits.

A SQLite database is a file found by name, but a running server writes to the file it *opened*:
delete, move or replace that file and the server's connections go on writing into a file nobody
will read again, while a new connection would silently create an empty database at the path. So
an engine on a SQLite file remembers the file's identity (st_dev, st_ino) and checks it, with one
``stat``, wherever a write could be lost: when a connection is opened (``mode=rw``: SQLite may
never create a file there), checked out of the pool, and committed (before and after). A mismatch
raises :class:`DatabaseFileChanged` (a 503 ``database_unavailable``: see :func:`is_unavailable`)
until the same file is back at its path. (A file overwritten in place keeps its identity: that is
not noticed.)
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import InvalidatePoolError


class DatabaseFileChanged(sqlite3.OperationalError):
    """The SQLite file at the configured path is not the one this engine opened (deleted, moved away
    or replaced). A DB-API error, so SQLAlchemy wraps it like any other (as ``OperationalError``)."""


def sqlite_path(url: str | URL) -> str | None:
    """The absolute path of a SQLite database file, or None (in-memory SQLite, a ``file:`` URI given
    as is, or another database)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return os.path.abspath(database)


class DatabaseFile:
    """A SQLite database file known by identity, not by name: the file at ``path`` when the engine was
    made (created empty if missing: a fresh data dir, which SQLite takes as an empty database)."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.identity = _identity(os.fstat(fd))
        finally:
            os.close(fd)
        self.uri = f"file:{quote(path)}?mode=rw"  # open, never create: a missing file is an error

    def changed(self) -> bool:
        try:
            return _identity(os.stat(self.path)) != self.identity
        except OSError:  # gone, or no longer reachable
            return True

    def check(self) -> None:
        if self.changed():
            raise DatabaseFileChanged(
                f"the database file {self.path} was deleted, moved or replaced since this process opened it; "
                "put the same file back to resume"
            )


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


class _CheckedConnection(sqlite3.Connection):
    """A connection whose commits into a file that left its path are never reported as done."""

    database_file: DatabaseFile

    def commit(self) -> None:
        try:
            self.database_file.check()
        except DatabaseFileChanged:
            self.rollback()  # refused before: not written anywhere
            raise
        super().commit()
        self.database_file.check()  # swapped during the commit: it may be in the orphan, so not a success


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        path = sqlite_path(url)
        if path is not None:
            _watch_file(engine, DatabaseFile(path))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, CLI works beside the server
            cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the client hears of it
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _watch_file(engine: Engine, file: DatabaseFile) -> None:
    """Open only ``file`` (by identity) and drop pooled connections once it has left its path."""

    @event.listens_for(engine, "do_connect")
    def _open(dialect: Any, _record: Any, _cargs: list[Any], cparams: dict[str, Any]) -> sqlite3.Connection:
        file.check()
        connection = dialect.loaded_dbapi.connect(file.uri, **{**cparams, "uri": True, "factory": _CheckedConnection})
        connection.database_file = file
        try:
            file.check()  # swapped while it was being opened
        except DatabaseFileChanged:
            connection.close()
            raise
        return connection

    @event.listens_for(engine, "checkout")
    def _same_file(_dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if file.changed():  # every pooled connection is on the old file: reconnect, which refuses
            raise InvalidatePoolError(f"{file.path} is not the database file this engine opened")


# SQLite errors that mean "busy or unreachable", not "wrong": see is_unavailable().
_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached or cannot serve right now (a 503, worth a
    retry) rather than that the query or the schema is wrong (a 500, a bug).

    * a disconnect SQLAlchemy noticed (``connection_invalidated``: the server went away mid-session);
    * a pool that could not hand out a connection in time (``sqlalchemy.exc.TimeoutError``);
    * psycopg's OperationalError: a failed connect (refused, reset, timed out), a server shutting
      down or starting up (SQLSTATE 57P0x), too many connections (53300), a lock or statement timeout;
    * SQLite busy/locked past its timeout, or a database file that cannot be opened or read;
    * the SQLite database file deleted, moved or replaced under the server (``DatabaseFileChanged``,
      service/store/db.py): unavailable until the same file is back at its path.

    Driver errors count whether SQLAlchemy wrapped them or not (the hits fetch of a search talks to the
    driver directly: service/store/documents.py).
    """
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.TimeoutError):
        return True
    if isinstance(exc, sa.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
    else:
        orig = exc
    if isinstance(orig, DatabaseFileChanged):
        return True
    if type(orig).__module__.startswith("psycopg"):
        import psycopg

        return isinstance(orig, psycopg.OperationalError)
    name = getattr(orig, "sqlite_errorname", "")
    return isinstance(name, str) and name.startswith(_SQLITE_UNAVAILABLE)
