"""The SQLite database file deleted, moved away or swapped under a running server.

The server writes to the file it opened, whatever name it has now: without a check it would
acknowledge writes into a file nobody reads again and report itself ready, and a new connection
would create an empty database at the path. service/store/db.py knows the file by identity
(st_dev, st_ino) and refuses: every request needing the database is a 503 ``database_unavailable``,
``/ready`` says ``"database": "error"``, nothing is created at the path, and a commit into a file
that left its path (before or during the commit) is never acknowledged. The same file put back
makes the same app serve again, with every acknowledged write in it.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from service.store.db import is_unavailable, make_engine
from tests.conftest import app_client

pytestmark = pytest.mark.unit


# -- the engine ------------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "test.sqlite3"


@pytest.fixture
def file_engine(db: Path):
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    yield engine
    engine.dispose()


def rows(engine) -> list[int]:
    with engine.connect() as conn:
        return [x for (x,) in conn.execute(text("SELECT x FROM t ORDER BY x"))]


def assert_refused(excinfo: pytest.ExceptionInfo) -> None:
    assert is_unavailable(excinfo.value), excinfo.value
    assert "deleted, moved or replaced" in str(excinfo.value)


def test_a_fresh_path_is_created_once_then_never_again(db: Path):
    engine = make_engine(f"sqlite:///{db}")  # the very first start: an empty file is an empty database
    try:
        assert db.exists()
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        db.unlink()
        engine.dispose()  # no pooled connection left: the next one has to open the path
        with pytest.raises(OperationalError) as excinfo:
            engine.connect()
        assert_refused(excinfo)
        assert not db.exists()
    finally:
        engine.dispose()


@pytest.mark.parametrize("gone", ["deleted", "moved"])
def test_a_commit_after_the_file_left_its_path_is_refused_and_not_written(file_engine, db: Path, gone: str):
    engine = file_engine
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    kept = db.with_name("kept.sqlite3")
    os.link(db, kept)  # another name of the same file, to put it back with
    with pytest.raises(OperationalError) as excinfo:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            if gone == "deleted":
                db.unlink()
            else:
                db.rename(db.with_name("moved.sqlite3"))
    assert_refused(excinfo)
    with pytest.raises(OperationalError) as excinfo:
        rows(engine)
    assert_refused(excinfo)
    assert not db.exists()
    kept.rename(db)  # the same file (inode) back at its path
    assert rows(engine) == [1]


def test_a_commit_during_which_the_file_is_moved_is_not_acknowledged(file_engine, db: Path):
    """The file leaves its path while SQLite runs COMMIT: the write may be in it, but whoever asked
    cannot be told it is safe, because the file at the path does not hold it."""
    engine, away = file_engine, db.with_name("away.sqlite3")

    def move_at_commit(statement: str) -> None:
        if statement == "COMMIT":
            db.rename(away)

    with pytest.raises(OperationalError) as excinfo:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            conn.connection.dbapi_connection.set_trace_callback(move_at_commit)
    assert_refused(excinfo)
    assert not db.exists()
    away.rename(db)
    assert rows(engine) == [1]  # it did land: refused after the commit, not before


def test_a_different_file_at_the_path_is_refused(file_engine, db: Path):
    engine = file_engine
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    engine.dispose()
    copy = db.with_name("copy.sqlite3")
    copy.write_bytes(db.read_bytes())
    copy.rename(db)  # a copy (a restored backup, say) is another file: this engine did not open it
    with pytest.raises(OperationalError) as excinfo:
        rows(engine)
    assert_refused(excinfo)


# -- the app ---------------------------------------------------------------------------------------


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"error": {
        "message": "The database is unavailable right now; retry shortly.",
        "type": "server_error", "param": None, "code": "database_unavailable",
    }}


async def assert_database_gone(client, db: Path) -> None:
    assert_unavailable(await client.post("/v1/collections/c/documents", json={"documents": [
        {"id": "during", "vector": [0, 1]}]}))
    assert_unavailable(await client.get("/v1/collections/c/documents/before"))
    assert_unavailable(await client.post("/v1/collections/c/search", json={"vector": [1, 0]}))
    ready = await client.get("/ready")
    assert ready.status_code == 503 and ready.json()["database"] == "error"
    assert not db.exists()  # never a new, empty database behind the server's back


@pytest.fixture
def one_model(settings):
    return msgspec.structs.replace(settings, models="tiny")


async def write_before(client) -> None:
    assert (await client.post("/v1/collections", json={"name": "c", "dimension": 2})).status_code == 201
    written = await client.post("/v1/collections/c/documents", json={"documents": [
        {"id": "before", "vector": [1, 0], "text": "acknowledged"}]})
    assert written.status_code == 200, written.text


@pytest.mark.integration
async def test_the_database_file_deleted_under_the_app_is_503_and_not_recreated(one_model):
    db = one_model.data_dir / "embedsearch.db"
    async with app_client(one_model) as client:
        await write_before(client)
        db.unlink()
        await assert_database_gone(client, db)
        await assert_database_gone(client, db)  # and it stays so


@pytest.mark.integration
async def test_the_database_file_moved_away_is_503_until_it_is_moved_back(one_model):
    db = one_model.data_dir / "embedsearch.db"
    away = db.with_name("moved-away.db")
    async with app_client(one_model) as client:
        await write_before(client)
        db.rename(away)
        await assert_database_gone(client, db)

        away.rename(db)
        document = await client.get("/v1/collections/c/documents/before")
        assert document.status_code == 200, document.text
        assert document.json()["text"] == "acknowledged"
        after = await client.post("/v1/collections/c/documents", json={"documents": [
            {"id": "after", "vector": [0.6, 0.8]}]})
        assert after.status_code == 200, after.text
        listed = (await client.get("/v1/collections/c/documents")).json()
        assert [d["id"] for d in listed["data"]] == ["after", "before"]  # "during" was refused: never written
        hits = (await client.post("/v1/collections/c/search", json={"vector": [1, 0]})).json()["data"]
        assert [h["id"] for h in hits] == ["before", "after"]
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["database"] == "ok"
