"""Database fixtures: every store test can run on SQLite and on a real PostgreSQL.

``engine`` (function scope) and ``module_engine`` (module scope) are parametrized over
``sqlite`` and ``postgresql``; each gives an engine on an empty database with the tables created
(``metadata.create_all``). SQLite uses a temporary file; PostgreSQL uses a private schema on the
session's server (see tests/postgres.py), dropped afterwards. PostgreSQL cases are skipped only
when the server binaries are absent.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.store.db import make_engine  # noqa: E402
from service.store.tables import metadata  # noqa: E402

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]  # a server: not unit


# `postgres_url` (the session's PostgreSQL server) is defined in tests/conftest.py, for every test directory.


@contextlib.contextmanager
def _engine(backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if backend == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}")
        try:
            metadata.create_all(engine)
            yield engine
        finally:
            engine.dispose()
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = make_engine(url, connect_args={"options": f"-c search_path={schema}"})
        try:
            metadata.create_all(engine)
            yield engine
        finally:
            engine.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with _engine(request.param, request, tmp_path_factory) as engine:
        yield engine


@pytest.fixture(scope="module", params=BACKENDS)
def module_engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with _engine(request.param, request, tmp_path_factory) as engine:
        yield engine
