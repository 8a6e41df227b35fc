"""Several processes migrating one fresh database at once: one runs the migrations, the others wait
for it and find the schema at head; and nobody waits past the deadline.

Without the lock (service/store/migrate.py) two processes both find no schema, both create it, and
the slower one dies with "table api_keys already exists" (the server, in the bug report: it started
beside ``python -m service keys create``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, inspect, select, text

from service.store import migrate
from service.store.db import make_engine
from service.store.tables import api_keys
from tests.postgres import fresh_database
from tests.server import ROOT

pytestmark = pytest.mark.unit

ROUNDS = 2  # fresh databases each; without the lock 14 of 14 SQLite and 11 of 12 PostgreSQL rounds failed
COMMANDS = [["migrate"]] * 3 + [["keys", "create", "--tenant", "x", "--create"]] * 2
# `python -m service ...` (service/__main__.py is `cli.main()`), but with the imports done first and
# the start held until every process is ready: starting a Python process takes about a second, a
# migration a fraction of that, so that unsynchronised starts would race only some of the time.
STARTER = """
import sys
from service import cli
from service.store import keys, migrate
print("ready", flush=True)
sys.stdin.readline()
cli.main(sys.argv[1:])
"""


def start_together(commands: list[list[str]], data_dir: Path, database_url: str = "") -> list[subprocess.Popen]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("EMBEDSEARCH_")}
    env["EMBEDSEARCH_DATABASE_URL"] = database_url  # empty: the SQLite file in the data dir
    processes = [
        subprocess.Popen([sys.executable, "-c", STARTER, *command, "--data-dir", str(data_dir)], cwd=ROOT, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    for process in processes:
        assert process.stdout.readline() == "ready\n", process.communicate(timeout=60)
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    return processes


def at_head(engine: Engine) -> bool:
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head


def key_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(api_keys)).scalar_one()


def run_together(data_dir: Path, database_url: str = "") -> None:
    """COMMANDS at once on a fresh database: all succeed, the schema is at head, every key is there."""
    processes = start_together(COMMANDS, data_dir, database_url)
    outputs = [process.communicate(timeout=120) for process in processes]
    failed = [(p.args[3:-2], err[-400:]) for p, (_, err) in zip(processes, outputs) if p.returncode != 0]
    assert not failed
    engine = make_engine(database_url or f"sqlite:///{data_dir / 'embedsearch.db'}")
    try:
        assert at_head(engine)
        assert key_count(engine) == COMMANDS.count(["keys", "create", "--tenant", "x", "--create"])
    finally:
        engine.dispose()


@pytest.mark.system
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_processes_started_at_once_on_a_fresh_sqlite_data_dir_all_succeed(tmp_path: Path, round_: int):
    run_together(tmp_path / "data")


@pytest.mark.system
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_processes_started_at_once_on_a_fresh_postgresql_database_all_succeed(
    tmp_path: Path, postgres_url: str, round_: int
):
    with fresh_database(postgres_url) as url:
        run_together(tmp_path / "data", url)


def assert_times_out(engine: Engine, lock: str) -> None:
    started = time.monotonic()
    with pytest.raises(migrate.MigrationLockTimeout, match=f"still migrating the database after 0.3 s .*{lock}"):
        migrate.upgrade(engine, lock_timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert "api_keys" not in inspect(engine).get_table_names()


def test_a_held_sqlite_lock_fails_the_migration_after_the_deadline(tmp_path: Path):
    db = tmp_path / "db.sqlite3"
    engine = make_engine(f"sqlite:///{db}")
    try:
        with open(f"{db}.migrate.lock", "a") as held:  # as another process migrating would hold it
            fcntl.flock(held, fcntl.LOCK_EX)
            assert_times_out(engine, "migrate.lock")
        migrate.upgrade(engine)  # released: it goes through
        assert at_head(engine)
    finally:
        engine.dispose()


@pytest.mark.integration
def test_a_held_postgresql_lock_fails_the_migration_after_the_deadline(postgres_url: str):
    with fresh_database(postgres_url) as url:
        engine, holder = make_engine(url), make_engine(url)
        try:
            with holder.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": migrate.ADVISORY_LOCK_KEY})
                assert_times_out(engine, "advisory lock")
            migrate.upgrade(engine)
            assert at_head(engine)
        finally:
            engine.dispose()
            holder.dispose()
