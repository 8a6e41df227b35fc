"""The process layout of ``python -m service serve``: one engine process fed by ``EMBEDSEARCH_WORKERS`` HTTP workers.

The engine process (``python -m service engine``: service/engine/server.py) owns the models, their
batchers and the indexes; each HTTP worker (``python -m service worker``) runs the Litestar app,
tokenises, reads and writes SQL, and calls the engine over a Unix socket (an abstract one on Linux:
no file to clean up). The workers share one listening socket, bound here, so the kernel hands each
connection to one of them. The event loop that parses HTTP thereby never waits for the GIL that a
forward pass holds, and several of them feed one batcher.

This process only supervises:

- ``serve`` binds the listening socket, migrates the database and makes the first admin key before it
  starts anything (once, not per worker).
- It makes this start's engine secret (random, 32 bytes) and hands it to each child it starts through a
  pipe of its own (``--secret-fd``: the child reads it and closes the pipe), never in argv, the
  environment or a file: the engine admits a connection only once it has shown that secret (and comes
  from the same uid), so no other local process can drive it (service/engine/protocol.py).
- A child that dies is started again: the engine (its workers answer 503 ``engine_unavailable``
  meanwhile and reconnect) or a worker. One that dies within ``QUICK_SECONDS`` of its start is started
  again after a growing pause (at most ``MAX_BACKOFF`` seconds); one that does so ``GIVE_UP_AFTER`` times
  in a row, the last time exiting by itself (not killed by a signal, as an operator or a test may do),
  cannot start (a bad setting, a broken install): the server stops everything and exits 1 with one line
  naming it, rather than restart it forever. The settings are checked before anything starts
  (service/preflight.py), so this is the last resort.
- SIGTERM (or SIGINT) drains: the workers first (each finishes its requests in flight, up to 30 s),
  then the engine (its batchers stop and every index is snapshotted); the exit status is 0.
- Every child dies with it (``PR_SET_PDEATHSIG``), so a SIGKILL of this process stops them all, as a crash
  would: what was acknowledged is in SQL already.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from service.engine.protocol import SECRET_BYTES
from service.settings import Settings

log = logging.getLogger("service")

MAX_BACKOFF = 5.0  # seconds between restarts of a child that keeps dying
QUICK_SECONDS = 10.0  # a child that exits sooner after its start died "quickly"
GIVE_UP_AFTER = 3  # quick deaths in a row that stop the server
COMMAND = [sys.executable, "-m", "service"]  # each child is this with `engine ...` or `worker ...`
DRAIN_SECONDS = 40.0  # a worker's graceful shutdown (30 s) and some
ENGINE_STOP_SECONDS = 300.0  # the engine's snapshots of every index


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child (before exec): get ``sig`` when its parent dies, even by SIGKILL (Linux; elsewhere a child
    outlives it)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    secret: bytes  # handed over through a pipe at each start
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0  # quick deaths in a row
    next_start: float = 0.0  # not before this (monotonic)

    def start(self, env: dict[str, str]) -> None:
        read, write = os.pipe()
        try:
            os.write(write, self.secret)  # far below a pipe's buffer: never blocks
        finally:
            os.close(write)
        try:
            # A process group of its own: a terminal's Ctrl-C reaches the supervisor, which stops children in order.
            self.process = subprocess.Popen([*self.argv, "--secret-fd", str(read)], env=env,
                                            pass_fds=(*self.pass_fds, read), preexec_fn=die_with_parent,
                                            process_group=0)
        finally:
            os.close(read)
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def reap(self) -> int | None:
        """The exit status if it has exited (and it is then set to be started again), else None."""
        if self.process is None or (status := self.process.poll()) is None:
            return None
        self.process = None
        quick = time.monotonic() - self.started < QUICK_SECONDS
        self.failures = self.failures + 1 if quick else 0
        self.next_start = time.monotonic() + (min(MAX_BACKOFF, 0.5 * 2 ** self.failures) if quick else 0.0)
        return status

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()


def engine_address() -> str:
    """An abstract Unix socket name on Linux, unique to this server (``@`` stands for its leading NUL: see
    service/engine/protocol.py ``socket_path``); a path in a private directory elsewhere."""
    name = f"embedsearch-engine-{os.getpid()}-{secrets.token_hex(4)}"
    if sys.platform.startswith("linux"):
        return "@" + name
    import tempfile

    return os.path.join(tempfile.mkdtemp(prefix="embedsearch-"), "engine.sock")


def run(settings: Settings, workers: int, sock: socket.socket) -> None:
    """Start the engine and ``workers`` HTTP workers on the listening socket ``sock``, keep them running, drain
    them on SIGTERM (exit 0); SystemExit (status 1) once a child has died quickly ``GIVE_UP_AFTER`` times."""
    address = engine_address()
    env = dict(os.environ, EMBEDSEARCH_DATA_DIR=str(settings.data_dir), EMBEDSEARCH_HOST=settings.host,
               EMBEDSEARCH_PORT=str(settings.port), EMBEDSEARCH_WORKERS=str(workers))
    secret = secrets.token_bytes(SECRET_BYTES)
    engine = Child("engine", [*COMMAND, "engine", "--address", address], secret)
    children = [Child(f"worker {i + 1}", [*COMMAND, "worker", "--address", address, "--fd", str(sock.fileno()),
                                          "--name", f"worker {i + 1}"], secret, (sock.fileno(),)) for i in range(workers)]
    failed = ""
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    log.info("serving on http://%s:%d with %d HTTP worker%s and one engine process", settings.host, settings.port,
             workers, "" if workers == 1 else "s")
    for child in [engine, *children]:
        child.start(env)
    while not stopping and not failed:
        for child in [engine, *children]:
            status = child.reap()
            if status is not None and status >= 0 and child.failures >= GIVE_UP_AFTER:
                failed = (f"error: the {child.name} process exited {child.failures} times in a row within "
                          f"{QUICK_SECONDS:.0f} s of its start (last exit status {status}; its log above says why); "
                          "stopping the server")
                break
            if status is not None and not stopping:
                log.error("%s exited (status %s); starting it again", child.name, status)
            if child.process is None and time.monotonic() >= child.next_start and not stopping:
                child.start(env)
        time.sleep(0.1)
    log.info("draining: the HTTP workers finish their requests, then the engine snapshots the indexes")
    sock.close()
    for child in children:
        child.signal(signal.SIGTERM)
    for child in children:
        child.wait(DRAIN_SECONDS)
    engine.signal(signal.SIGTERM)
    engine.wait(ENGINE_STOP_SECONDS)
    log.info("stopped")
    if failed:
        raise SystemExit(failed)
