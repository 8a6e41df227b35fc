"""The command line a newcomer meets first (issue #25): one line and a non-zero exit for a wrong setting, with
nothing created; the help, the version and the commands that manage keys and show the settings.

Each command runs as ``python -m service ...`` in a subprocess of its own, with none of the caller's
``EMBEDSEARCH_*`` variables, and a data dir under the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.server import free_port, server_environment
from service import supervisor
from service.settings import Settings
from tests.server import ROOT

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**server_environment(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)


def one_error(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a command that failed."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def refused_port():
    listener = socket.create_server(("127.0.0.1", 0))
    return listener, str(listener.getsockname()[1])


@pytest.mark.parametrize("env, words", [
    ({"EMBEDSEARCH_MODELS": "gemma3:999m"},
     "EMBEDSEARCH_MODELS names 'gemma3:999m', which is not in the model registry (known: embeddinggemma, "),
    ({"EMBEDSEARCH_DATABASE_URL": "notaurl"}, "EMBEDSEARCH_DATABASE_URL is not a database URL"),
    ({"EMBEDSEARCH_DATABASE_URL": "mysql://me:hunter2@localhost/db"}, "only sqlite and postgresql are supported"),
    ({"EMBEDSEARCH_DATABASE_URL": f"postgresql+psycopg://me:hunter2@127.0.0.1:{free_port()}/db"},
     "EMBEDSEARCH_DATABASE_URL (postgresql+psycopg://me:***@127.0.0.1:"),
    ({"EMBEDSEARCH_WORKERS": "-1"}, "EMBEDSEARCH_WORKERS='-1' is invalid: Expected `int` >= 0"),
    ({"EMBEDSEARCH_MODELS_FILE": "/no/such/models.toml"}, "EMBEDSEARCH_MODELS_FILE '/no/such/models.toml'"),
])
def test_a_wrong_setting_is_one_line_and_nothing_is_created(tmp_path: Path, env: dict, words: str):
    line = one_error(cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), env=env))
    assert words in line and "hunter2" not in line
    assert list(tmp_path.iterdir()) == []


def test_a_port_in_use_is_found_before_the_database_or_a_key(tmp_path: Path):
    listener, port = refused_port()
    with listener:
        line = one_error(cli("serve", "--port", port, "--data-dir", str(tmp_path / "data")))
    assert f"cannot listen on 127.0.0.1:{port}" in line and "EMBEDSEARCH_PORT" in line
    assert list(tmp_path.iterdir()) == []  # no database, and no admin key printed (stdout is empty)


def test_a_data_dir_under_a_file_is_refused(tmp_path: Path):
    (tmp_path / "file").write_text("")
    line = one_error(cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "file" / "data")))
    assert "EMBEDSEARCH_DATA_DIR" in line and "which is a file" in line
    line = one_error(cli("migrate", "--data-dir", str(tmp_path / "file")))
    assert "is a file" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_data_dir_that_cannot_be_written_is_refused(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = one_error(cli("serve", "--port", str(free_port()), "--data-dir", str(locked / "data")))
    assert "not writable" in line
    assert list(locked.iterdir()) == []


def test_an_unreachable_postgresql_fails_every_command_in_one_line(tmp_path: Path):
    env = {"EMBEDSEARCH_DATABASE_URL": f"postgresql+psycopg://me:hunter2@127.0.0.1:{free_port()}/db"}
    for command in (["migrate"], ["keys", "create", "--tenant", "acme"], ["keys", "list"]):
        line = one_error(cli(*command, "--data-dir", str(tmp_path / "data"), env=env))
        assert "cannot be used" in line and "hunter2" not in line
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_variable_is_named_with_the_closest_setting(tmp_path: Path):
    result = cli("migrate", "--data-dir", str(tmp_path / "data"),
                 env={"EMBEDSEARCH_MODLES": "tiny", "EMBEDSEARCH_TEST_CACHE": "/x"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["warning: EMBEDSEARCH_MODLES is not a setting; did you mean "
                                          "EMBEDSEARCH_MODELS?"]


def test_help_lists_the_public_commands_under_one_name():
    result = cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: embedsearch ")
    assert "SUPPRESS" not in result.stdout and "engine" not in result.stdout and "worker" not in result.stdout
    assert "{serve,migrate,keys,snapshot,restore,settings}" in result.stdout
    wrong = cli("nosuch")
    assert wrong.returncode == 2 and "'engine'" not in wrong.stderr and "'serve'" in wrong.stderr


def test_version():
    result = cli("--version")
    assert result.returncode == 0 and result.stdout == "embedsearch 0.1.0\n"


def test_keys_need_the_servers_database_and_are_listed_and_revoked(tmp_path: Path):
    data = tmp_path / "data"
    line = one_error(cli("keys", "create", "--tenant", "acme", "--data-dir", str(data)))
    assert "--data-dir" in line and "EMBEDSEARCH_DATA_DIR" in line and "--create" in line
    assert not data.exists()
    one_error(cli("keys", "list", "--data-dir", str(data)))
    assert not data.exists()

    made = cli("keys", "create", "--tenant", "acme", "--create", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[-1]
    assert key.startswith("es-")
    listed = cli("keys", "list", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["id", "tenant", "prefix", "admin", "created_at"]
    key_id, tenant, prefix, admin, *_ = row.split()
    assert (tenant, admin) == ("acme", "no") and key.startswith(prefix) and key not in listed.stdout

    assert cli("keys", "revoke", key_id, "--data-dir", str(data)).returncode == 0
    assert [line.split() for line in cli("keys", "list", "--data-dir", str(data)).stdout.splitlines()] == [header.split()]
    assert "no key has the id" in one_error(cli("keys", "revoke", key_id, "--data-dir", str(data)))


def test_settings_are_shown_with_their_source_and_secrets_masked():
    result = cli("settings", "--port", "9999", env={
        "EMBEDSEARCH_API_KEY": "hunter2", "EMBEDSEARCH_MILVUS_TOKEN": "root:hunter2",
        "EMBEDSEARCH_DATABASE_URL": "postgresql+psycopg://me:hunter2@db/embed"})
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    shown = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert set(shown) == {"EMBEDSEARCH_" + name.upper() for name in Settings.__struct_fields__}
    assert shown["EMBEDSEARCH_PORT"] == ["9999", "--port"]
    assert shown["EMBEDSEARCH_HOST"] == ["127.0.0.1", "default"]
    assert shown["EMBEDSEARCH_API_KEY"] == ["****", "environment"]
    assert shown["EMBEDSEARCH_DATABASE_URL"] == ["postgresql+psycopg://me:****@db/embed", "environment"]
