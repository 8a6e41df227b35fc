"""Checks of the configuration that run before a command creates anything.

A wrong setting should end a command at once, in one line on stderr that names the setting, and leave no
trace: no database file, no data dir, no admin key printed for a server that never starts. So ``serve``
and the other commands call these first, and each raises ``SystemExit("error: ...")`` (exit status 1)
on the first problem it finds. Unknown ``EMBEDSEARCH_*`` variables (a typo, usually) only warn.
"""

from __future__ import annotations

import difflib
import os
import socket
import sys
from typing import Mapping

from service.settings import ENV_PREFIX, Settings

# EMBEDSEARCH_* variables that are not server settings: the client's, and the test suite's knobs.
NOT_SETTINGS = ("EMBEDSEARCH_BASE_URL",)
NOT_SETTINGS_PREFIXES = ("EMBEDSEARCH_TEST_", "EMBEDSEARCH_FUZZ_")
DATABASES = ("sqlite", "postgresql")
CONNECT_SECONDS = 5


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> None:
    """One warning line for each ``EMBEDSEARCH_*`` variable that is no setting, naming the closest one."""
    environ = os.environ if environ is None else environ
    known = [ENV_PREFIX + name.upper() for name in Settings.__struct_fields__]
    for name in sorted(environ):
        if (not name.startswith(ENV_PREFIX) or name in known or name in NOT_SETTINGS
                or name.startswith(NOT_SETTINGS_PREFIXES)):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "`embedsearch settings` lists them all"
        print(f"warning: {name} is not a setting; {hint}", file=sys.stderr)


def check_models(settings: Settings) -> None:
    """Every name in EMBEDSEARCH_MODELS is in the registry (the built-in one and EMBEDSEARCH_MODELS_FILE's)."""
    from service.engine.registry import Registry

    try:
        registry = Registry.load(settings.models_file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: EMBEDSEARCH_MODELS_FILE {settings.models_file!r} cannot be read: {exc}") from None
    if not settings.served_models:
        raise SystemExit("error: EMBEDSEARCH_MODELS is empty; name at least one model")
    for name in settings.served_models:
        if registry.get(name) is None:
            raise SystemExit(f"error: EMBEDSEARCH_MODELS names {name!r}, which is not in the model registry "
                             f"(known: {', '.join(registry.names())})")


def check_data_dir(settings: Settings) -> None:
    """The data dir is a writable directory, or could be made as one (no file in its way)."""
    path = settings.data_dir.absolute()
    where = f"the data dir {str(settings.data_dir)!r} (--data-dir or EMBEDSEARCH_DATA_DIR)"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"would be under {existing}, which is a file"
        raise SystemExit(f"error: {where} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be made: {existing} is not writable"
        raise SystemExit(f"error: {where} {what}")


def check_database(settings: Settings) -> None:
    """EMBEDSEARCH_DATABASE_URL is a URL of a supported database, and a PostgreSQL server answers it."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.exc import ArgumentError

    if not settings.database_url:
        return
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise SystemExit("error: EMBEDSEARCH_DATABASE_URL is not a database URL (want sqlite:///PATH or "
                         "postgresql+psycopg://USER:PASSWORD@HOST/DB)") from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() not in DATABASES:
        raise SystemExit(f"error: EMBEDSEARCH_DATABASE_URL names {url.get_backend_name()!r} ({shown}); only sqlite "
                         "and postgresql are supported")
    if url.get_backend_name() != "postgresql":
        return
    try:
        engine = create_engine(url, connect_args={"connect_timeout": CONNECT_SECONDS})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # a missing driver, a refused or timed-out connection, a bad password...
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise SystemExit(f"error: EMBEDSEARCH_DATABASE_URL ({shown}) cannot be used: {reason}") from None


def check_database_exists(settings: Settings) -> None:
    """A SQLite database file is there already: a command that reads keys or collections needs the server's
    own database, not a new, empty one made in the wrong directory."""
    from service.store.db import sqlite_path

    path = sqlite_path(settings.sqlalchemy_url)
    if path is None or os.path.exists(path):
        return
    if settings.database_url:
        raise SystemExit(f"error: EMBEDSEARCH_DATABASE_URL names {path}, which does not exist")
    raise SystemExit(f"error: there is no database in the data dir {str(settings.data_dir)!r}; point --data-dir "
                     "or EMBEDSEARCH_DATA_DIR at the server's data dir (or pass --create to make a new one)")


def listen(settings: Settings) -> socket.socket:
    """The server's listening socket, bound now (before the database is touched), inheritable by workers."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        sock = socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    except OSError as exc:
        raise SystemExit(f"error: cannot listen on {settings.host}:{settings.port} (EMBEDSEARCH_HOST/--host, "
                         f"EMBEDSEARCH_PORT/--port): {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def check(settings: Settings, *, serve: bool = False, database_exists: bool = False) -> None:
    """The checks a command needs: the database always; the models and the data dir for ``serve``, the data
    dir for any command where the SQLite file lives there."""
    if serve:
        check_models(settings)
    check_database(settings)
    if serve or not settings.database_url:
        check_data_dir(settings)
    if database_exists:
        check_database_exists(settings)
