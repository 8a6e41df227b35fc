"""Command line: ``embedsearch`` (or ``python -m service``) ``serve | migrate | keys | snapshot | restore | settings``.

Each command checks its settings first (service/preflight.py) and ends with one ``error:`` line, having
created nothing, when one is wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

try:
    from service import preflight
    from service.settings import ENV_PREFIX, Settings
except ModuleNotFoundError as exc:  # a client-only install (`pip install embedsearch`) has no server
    raise SystemExit(f"The embedsearch server needs its dependencies ({exc.name} is not installed): "
                     "pip install 'embedsearch[server]'") from None


FLAGS = {"data_dir": "--data-dir", "host": "--host", "port": "--port"}  # settings a command-line flag may set


def _flags(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name, None) for name in FLAGS}


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(**_flags(args))


def _engine(settings: Settings):
    from service.store import migrate
    from service.store.db import make_engine

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        migrate.upgrade(engine)
    except migrate.MigrationLockTimeout as exc:
        engine.dispose()
        raise SystemExit(f"error: {exc}") from None
    return engine


def setup_logging(level: str, fmt: str = "text", process: str = "") -> None:
    """Text for people (default) or JSON lines (EMBEDSEARCH_LOG_FORMAT=json), to stderr, request ids included."""
    from service.observability.logging import setup_logging as setup

    setup(level, fmt, process)


def _process_setup(settings: Settings, process: str = "") -> None:
    if settings.log_format == "json":  # JSON lines only on stderr: no progress bars (read when tqdm is imported)
        from service.observability.logging import disable_progress_bars

        disable_progress_bars()
    setup_logging(settings.log_level, settings.log_format, process)


def serve(args: argparse.Namespace) -> None:
    """The server: HTTP workers and an engine process (service/supervisor.py), or with 0 workers one process.
    The settings are checked and the port bound before the database is touched or a key is made."""
    settings = _settings(args)
    preflight.check(settings, serve=True)
    sock = preflight.listen(settings)
    _process_setup(settings)
    workers = settings.http_workers
    if workers == 0:
        _uvicorn(settings, sock=sock)
        return
    from service import supervisor
    from service.api.app import ensure_admin_key
    from service.store.keys import KeyStore

    database = _engine(settings)  # migrated once here, before any worker starts
    try:
        ensure_admin_key(KeyStore(database), settings)
    finally:
        database.dispose()
    supervisor.run(settings, workers, sock)


def worker_cmd(args: argparse.Namespace) -> None:
    """One HTTP worker (started by ``serve``): the app on the listening socket it inherited, fed by the engine."""
    settings = _settings(args)
    _process_setup(settings, args.name)
    import socket

    # Not uvicorn's own fd= (it takes any fd for a Unix socket, and so leaves TCP_NODELAY off: 40 ms a response).
    from service.engine.protocol import read_secret

    from service.supervisor import say_ready

    engine_process = (args.address, read_secret(args.secret_fd))
    _uvicorn(settings, engine_process=engine_process, sock=socket.socket(fileno=args.fd),
             started=lambda: say_ready(args.ready_fd))


def engine_cmd(args: argparse.Namespace) -> None:
    """The engine process (started by ``serve``): models and indexes, answering the workers on ``--address``."""
    import asyncio

    from service.engine.engine import Engine
    from service.engine.protocol import read_secret
    from service.engine.registry import Registry
    from service.engine.server import serve as serve_engine
    from service.store.db import make_engine
    from service.store.documents import DocumentStore
    from service.supervisor import say_ready

    secret = read_secret(args.secret_fd)
    settings = _settings(args)
    _process_setup(settings, "engine")
    database = make_engine(settings.sqlalchemy_url)
    engine = Engine(settings, Registry.load(settings.models_file), DocumentStore(database))
    loop, _ = _http_stack()
    serving = serve_engine(engine, args.address, settings.model_cache, secret, ready=lambda: say_ready(args.ready_fd))
    try:
        if loop == "uvloop":
            import uvloop

            uvloop.run(serving)
        else:
            asyncio.run(serving)
    finally:
        database.dispose()


def _uvicorn(settings: Settings, *, engine_process: tuple[str, bytes] | None = None, sock: object = None,
             started: Callable[[], None] = lambda: None) -> None:
    """Serve the app on ``settings``' host and port, or on the listening socket ``sock`` (an HTTP worker's, with
    ``engine_process``: the engine process's address and this start's secret). Once the app has started and
    serves: one INFO line saying so, then ``started()`` (a worker tells the supervisor it is ready)."""
    import uvicorn

    from service.api.app import create_app

    app = create_app(settings, engine_process=engine_process)
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal: let that end in exit 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    loop, http = _http_stack()
    stack = f"uvicorn, {loop} event loop, {http} parser"
    where = (f"serving http://{settings.host}:{settings.port} (pid {os.getpid()}; {stack})" if engine_process else
             f"serving on http://{settings.host}:{settings.port} in one process ({stack}; the models load in the "
             "background: GET /ready says when they are ready)")

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # the app's start-up is done and the socket is served
                logging.getLogger("service").info("%s", where)
                started()

    # log_config=None: uvicorn's records go through our handler (and format); the app writes the access log.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            loop=loop, http=http, timeout_graceful_shutdown=30, log_config=None, access_log=False)
    Server(config).run(sockets=[sock] if sock is not None else None)


def _http_stack() -> tuple[str, str]:
    """uvloop and httptools where installed (dependencies, except uvloop on Windows), else asyncio and h11."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def migrate_cmd(args: argparse.Namespace) -> None:
    settings = _settings(args)
    preflight.check(settings)
    _engine(settings).dispose()
    print(f"database at {settings.sqlalchemy_url.split('@')[-1]} is up to date")


def _keys(args: argparse.Namespace, *, create: bool = False):
    """The key store of the server's database: one that exists already unless ``create``."""
    from service.store.keys import KeyStore

    settings = _settings(args)
    preflight.check(settings, database_exists=not create)
    return KeyStore(_engine(settings))


def keys_create(args: argparse.Namespace) -> None:
    from service.store.keys import ADMIN_TENANT, ReservedTenant

    tenant = ADMIN_TENANT if args.admin and args.tenant is None else args.tenant
    store = _keys(args, create=args.create)
    try:
        key = store.create(tenant, admin=args.admin)
    except ReservedTenant as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        store.engine.dispose()
    print(f"{'Admin key' if args.admin else 'API key for tenant ' + repr(tenant)} (shown once; only its hash is "
          "stored):")
    print(key)


def keys_list(args: argparse.Namespace) -> None:
    """Every key's record, one a line (never the key: only its hash is stored)."""
    store = _keys(args)
    try:
        records = store.records()
    finally:
        store.engine.dispose()
    rows = [("id", "tenant", "prefix", "admin", "created_at")]
    rows += [(str(r.id), r.tenant, r.prefix, "yes" if r.admin else "no", r.created_at.isoformat(" ", "seconds"))
             for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def keys_revoke(args: argparse.Namespace) -> None:
    store = _keys(args)
    try:
        revoked = store.revoke(args.id)
    finally:
        store.engine.dispose()
    if not revoked:
        raise SystemExit(f"error: no key has the id {args.id} (`keys list` shows them)")
    print(f"revoked key {args.id} (a running server refuses it within 10 s)")


def snapshot_cmd(args: argparse.Namespace) -> None:
    from service.store.backup import BackupError, dump

    settings = _settings(args)
    preflight.check(settings, database_exists=True)
    engine = _engine(settings)
    try:
        count = dump(engine, args.tenant, args.collection, args.out)
    except BackupError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        engine.dispose()
    print(f"backed up {count} documents of {args.tenant}/{args.collection} to {args.out}")


def restore_cmd(args: argparse.Namespace) -> None:
    from service.store.backup import BackupError, restore

    settings = _settings(args)
    preflight.check(settings)
    engine = _engine(settings)
    try:
        name, count = restore(engine, args.file, args.tenant, args.name)
    except BackupError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        engine.dispose()
    print(f"restored {count} documents into {args.tenant}/{name}")


def settings_cmd(args: argparse.Namespace) -> None:
    """Every setting, its value (secrets masked) and where it came from: a flag, the environment or the default."""
    settings = _settings(args)
    flags = _flags(args)
    for name in Settings.__struct_fields__:
        variable = ENV_PREFIX + name.upper()
        source = FLAGS[name] if flags.get(name) is not None else "environment" if variable in os.environ else "default"
        print(f"{variable:<36} {settings.shown(name):<24} {source}")


def version() -> str:
    """The installed package's version, else (a checkout run in place) pyproject.toml's."""
    import importlib.metadata

    try:
        return importlib.metadata.version("embedsearch")
    except importlib.metadata.PackageNotFoundError:
        import tomllib

        try:
            return tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, ValueError):
            return "unknown"


def _private_fd(text: str) -> int:
    """An fd handed to this process, kept from any process it starts in turn (milvus-lite, say)."""
    fd = int(text)
    os.set_inheritable(fd, False)
    return fd


HIDDEN = ("engine", "worker")  # the processes `serve` starts: parsed only when asked for, so never listed


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="embedsearch", description="embedsearch server and tools")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", type=Path, help="data directory (default $EMBEDSEARCH_DATA_DIR or ./data)")
        return p

    def with_address(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--host", help="bind address (default $EMBEDSEARCH_HOST or 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default $EMBEDSEARCH_PORT or 8000)")
        return with_data_dir(p)

    p = with_address(commands.add_parser("serve", help="run the HTTP server"))
    p.set_defaults(func=serve)

    if argv[:1] and argv[0] in HIDDEN:
        # The processes `serve` starts (service/supervisor.py); not for use by hand.
        # --secret-fd: a pipe holding the start's engine secret, which the process reads and closes.
        # --ready-fd: a pipe the process writes one line to, and closes, once it is ready (service/supervisor.py).
        p = with_data_dir(commands.add_parser("engine"))
        p.add_argument("--address", required=True)
        p.add_argument("--secret-fd", type=int, required=True)
        p.add_argument("--ready-fd", type=_private_fd)
        p.set_defaults(func=engine_cmd)
        p = with_data_dir(commands.add_parser("worker"))
        p.add_argument("--address", required=True)
        p.add_argument("--secret-fd", type=int, required=True)
        p.add_argument("--ready-fd", type=_private_fd)
        p.add_argument("--fd", type=int, required=True)
        p.add_argument("--name", default="worker", help="its name in the log")
        p.set_defaults(func=worker_cmd)

    p = with_data_dir(commands.add_parser("migrate", help="create or upgrade the database schema"))
    p.set_defaults(func=migrate_cmd)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    p = with_data_dir(keys.add_parser("create", help="create an API key for a tenant and print it"))
    p.add_argument("--tenant", help="tenant name (1-64 characters)")
    p.add_argument("--admin", action="store_true",
                   help="make an admin key (tenant admin): it may issue, list and revoke keys at /v1/keys")
    p.add_argument("--create", action="store_true",
                   help="make the database if there is none yet (else that is an error: a wrong --data-dir)")
    p.set_defaults(func=keys_create)
    p = with_data_dir(keys.add_parser("list", help="list the keys (id, tenant, prefix, admin, created_at)"))
    p.set_defaults(func=keys_list)
    p = with_data_dir(keys.add_parser("revoke", help="revoke a key by its id (as `keys list` shows it)"))
    p.add_argument("id", type=int)
    p.set_defaults(func=keys_revoke)

    p = with_data_dir(commands.add_parser("snapshot", help="back up one collection (works while the server runs)"))
    p.add_argument("--tenant", required=True)
    p.add_argument("--collection", required=True)
    p.add_argument("--out", type=Path, required=True, help="backup file to write")
    p.set_defaults(func=snapshot_cmd)

    p = with_data_dir(commands.add_parser("restore", help="restore a collection backup (works while the server runs)"))
    p.add_argument("file", type=Path)
    p.add_argument("--tenant", required=True)
    p.add_argument("--name", help="restore under this name (default: the backed-up name)")
    p.set_defaults(func=restore_cmd)

    p = with_address(commands.add_parser("settings", help="print every setting, its value and where it came from"))
    p.set_defaults(func=settings_cmd)

    args = parser.parse_args(argv)
    if args.command not in HIDDEN:  # the children get the same environment: warned once, here
        preflight.warn_unknown_variables()
    if getattr(args, "keys_command", None) == "create" and args.tenant is None and not args.admin:
        parser.error("give --tenant NAME (or --admin)")
    if getattr(args, "tenant", None) is not None and not 1 <= len(args.tenant) <= 64:
        parser.error("--tenant must be 1 to 64 characters")
    args.func(args)
