"""A throwaway PostgreSQL server for tests.

``start_postgres()`` is a context manager yielding a SQLAlchemy URL
(``postgresql+psycopg://embedsearch@127.0.0.1:PORT/embedsearch_test``) of a server it creates
with ``initdb`` in a temporary directory, starts with ``pg_ctl`` on 127.0.0.1 and a free port
(trust auth, ``fsync=off``), and stops and deletes on exit. Typical use, in a conftest::

    @pytest.fixture(scope="session")
    def postgres_url():
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(start_postgres())
            except PostgresUnavailable as exc:
                pytest.skip(str(exc))
            yield url

* ``EMBEDSEARCH_TEST_POSTGRES_URL`` set: that server is used as is (nothing started or stopped).
* ``fresh_database(url)`` gives a new, empty database on that server for one test (dropped after).
* ``own_postgres()`` starts a private server (never the one of the URL above) whose handle can
  ``stop()`` and ``start()`` it again on the same data and port, for tests of database outages.
* ``EMBEDSEARCH_TEST_POSTGRES_BIN`` may name the directory holding ``initdb``/``pg_ctl``;
  otherwise the newest ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu) or ``$PATH`` is used.
* No binaries found: :class:`PostgresUnavailable` is raised (callers skip); any other failure
  raises RuntimeError with the server log, so a broken setup fails loudly instead of skipping.
* PostgreSQL refuses to run as root: as root, the server runs as the system user
  ``embedsearch-pg``, created (``useradd --system``) if missing.

Run as a script (``python -m tests.postgres``) it starts a server, prints the URL and waits
for Ctrl-C, which is handy for poking at it with psql.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ENV_URL = "EMBEDSEARCH_TEST_POSTGRES_URL"
ENV_BIN = "EMBEDSEARCH_TEST_POSTGRES_BIN"
SYSTEM_USER = "embedsearch-pg"  # OS user the server runs as when the tests run as root
ROLE = "embedsearch"  # database superuser
DATABASE = "embedsearch_test"


class PostgresUnavailable(Exception):
    """The PostgreSQL server binaries are not installed."""


def find_bin_dir() -> Path | None:
    """The directory with initdb, pg_ctl and postgres, or None."""
    candidates: list[str] = []
    if os.environ.get(ENV_BIN):
        candidates.append(os.environ[ENV_BIN])

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/", path)
        return tuple(int(p) for p in match.group(1).split(".") if p) if match else ()

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        path = Path(candidate)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The account to run the server as: None for the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        capture_output=True,
        text=True,
    )
    try:  # another session may have created it meanwhile
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(f"cannot create the system user {SYSTEM_USER}: {result.stderr.strip()}") from None


def _locale() -> str:
    """A UTF-8 locale for initdb; a non-C one when available, so that collation bugs show up."""
    try:
        available = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.split()
    except OSError:
        available = []
    lowered = {name.lower().replace("-", ""): name for name in available}
    for wanted in ("en_us.utf8", "c.utf8"):
        if wanted in lowered:
            return lowered[wanted]
    return "C"


class _Server:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="embedsearch-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LC_ALL": "C", "TZ": "UTC"}
        kwargs: dict = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True, text=True, env=env, cwd=self.root, timeout=120, **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.server_log()}"
            )
        return result

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> str:
        initdb = (
            "initdb", "--pgdata", str(self.data), "--username", ROLE, "--auth", "trust",
            "--encoding", "UTF8", "--locale", _locale(), "--no-sync", "--no-instructions",
        )
        # An ICU en-US default collation (PostgreSQL 15+ built with ICU) orders text unlike code
        # points ("B" < "a" is false, "ä" sorts before "b"), so tests catch a missing COLLATE "C".
        if self.run(*initdb, "--locale-provider", "icu", "--icu-locale", "en-US", check=False).returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            self.run(*initdb)
        for attempt in range(5):  # the free port may be taken between probing and binding
            self.port = _free_port()
            result = self._pg_ctl_start()
            if result.returncode == 0:
                break
            if attempt == 4 or "could not bind" not in self.server_log():
                raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{self.server_log()}")
        self._create_database()
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        return self.run(
            "pg_ctl", "--pgdata", str(self.data), "--log", str(self.log), "--options", options,
            "--wait", "--timeout", "60", "start", check=False,
        )

    def halt(self, mode: str = "fast") -> None:
        """Stop the server but keep its data (``mode``: fast, or immediate as in a crash); see resume()."""
        self.run("pg_ctl", "--pgdata", str(self.data), "--mode", mode, "--wait", "stop")

    def resume(self) -> None:
        """Start a halted server again: same data directory, same port."""
        result = self._pg_ctl_start()
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{self.server_log()}")

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=self.port, user=ROLE, dbname="postgres", autocommit=True, connect_timeout=5
                ) as conn:
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.run("pg_ctl", "--pgdata", str(self.data), "--mode", "immediate", "--wait", "stop", check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _bin_dir() -> Path:
    bindir = find_bin_dir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in /usr/lib/postgresql/*/bin "
            f"or on PATH; install PostgreSQL, or set {ENV_BIN} or {ENV_URL}"
        )
    return bindir


@contextlib.contextmanager
def start_postgres() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a PostgreSQL server that lives as long as the ``with`` block."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    server = _Server(_bin_dir())
    try:
        yield server.start()
    finally:
        server.stop()


class PostgresServer:
    """A private server that a test may stop and start again (same data, same port): see ``own_postgres``."""

    def __init__(self, server: _Server, url: str) -> None:
        self._server = server
        self.url = url

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down, closing every connection (``immediate``: as if it crashed)."""
        self._server.halt(mode)

    def start(self) -> None:
        self._server.resume()

    def log(self) -> str:
        return self._server.server_log()


@contextlib.contextmanager
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own (never EMBEDSEARCH_TEST_POSTGRES_URL's, which cannot be
    stopped), for tests of outages; deleted on exit. Raises PostgresUnavailable without binaries."""
    server = _Server(_bin_dir())
    try:
        yield PostgresServer(server, server.start())
    finally:
        server.stop()


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """The URL of a new, empty database on the server of ``url``; dropped on exit (connections and all)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


if __name__ == "__main__":
    with start_postgres() as url:
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
