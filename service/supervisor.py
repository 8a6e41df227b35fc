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
- Each child says when it is ready, through a pipe of its own (``--ready-fd``: it writes one line and closes
  it): a worker once its app has started and it serves on the listening socket, the engine once it
  listens, every index is open and every model has loaded (or failed to: /ready names it). The
  supervisor logs its one line, "serving on ...", once every child has said so.
- A child that exits by itself before it was ready cannot start (a bad setting, a broken install, a data
  dir it cannot use): its log says why (one ``error:`` line), and the supervisor stops the others and
  exits 1 at once with one line naming it, never starting it again. So does a child that is not ready
  within ``READY_SECONDS`` of its start (the engine's first start may download or convert its models).
- A child that crashes once it was ready, or is killed by a signal at any time (an operator, the OOM
  killer), is started again at once: the engine (its workers answer 503 ``engine_unavailable``
  meanwhile and reconnect) or a worker. One that crashes more than ``MAX_CRASHES`` times within
  ``CRASH_WINDOW`` seconds keeps crashing: the supervisor stops the others and exits 1 with one line
  naming it (:class:`RestartPolicy` decides). The settings are checked before anything starts
  (service/preflight.py), so these are the last resort.
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
from collections import deque
from dataclasses import dataclass, field

from service.engine.protocol import SECRET_BYTES
from service.settings import Settings

log = logging.getLogger("service")

MAX_CRASHES = 5  # crashes of one child within CRASH_WINDOW that are restarted; one more stops the server
CRASH_WINDOW = 60.0  # seconds
# How long a child may take from its start to saying it is ready. The engine's first start may download a
# hub model or convert a packaged GGUF (about a minute for gemma3:270m on 2 cores), so its bound is generous.
READY_SECONDS = {"engine": 1800.0, "worker": 120.0}
READY = b"ready\n"  # what a child writes to its --ready-fd
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


def say_ready(fd: int | None) -> None:
    """In a child: tell the supervisor, through the pipe it handed over (``--ready-fd``), that this process is
    ready, and close it. Nothing to do without one (a process started by hand) or once the supervisor is gone."""
    if fd is None:
        return
    try:
        os.write(fd, READY)
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def exit_described(status: int) -> str:
    """A child's exit status in words: ``exited with status 3``, ``was killed by SIGKILL``."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"was killed by signal {-status}"


@dataclass
class RestartPolicy:
    """Whether a child that exited is started again (:meth:`exited` gives None) or stops the server (it gives
    the one ``error:`` line to end with). Pure: the caller gives the clock.

    - Exited by itself (a status, not a signal) before it was ready: it cannot start; never restarted.
    - Crashed after it was ready, or killed by a signal (an operator, the OOM killer): restarted, unless that
      makes more than ``max_crashes`` within ``window`` seconds: then it keeps crashing.
    """

    name: str
    max_crashes: int = MAX_CRASHES
    window: float = CRASH_WINDOW
    crashes: deque[float] = field(default_factory=deque)  # when each recent one happened (monotonic)

    def exited(self, status: int, ready: bool, now: float) -> str | None:
        if status >= 0 and not ready:
            return (f"error: the {self.name} process {exit_described(status)} before it was ready (its log above "
                    "says why); stopping the server")
        self.crashes.append(now)
        while self.crashes and self.crashes[0] <= now - self.window:
            self.crashes.popleft()
        if len(self.crashes) > self.max_crashes:
            return (f"error: the {self.name} process keeps crashing: {len(self.crashes)} times within "
                    f"{self.window:.0f} s (the last time it {exit_described(status)}; its log above says why); "
                    "stopping the server")
        return None


@dataclass
class Child:
    name: str
    kind: str  # "engine" or "worker": its READY_SECONDS
    argv: list[str]
    secret: bytes  # handed over through a pipe at each start
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen | None = None
    started: float = 0.0
    ready: bool = False  # this start said it is ready
    ready_pipe: int | None = None  # the read end of this start's --ready-fd
    policy: RestartPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.policy = RestartPolicy(self.name, MAX_CRASHES, CRASH_WINDOW)

    def start(self, env: dict[str, str]) -> None:
        read, write = os.pipe()
        try:
            os.write(write, self.secret)  # far below a pipe's buffer: never blocks
        finally:
            os.close(write)
        self.ready_pipe, ready_write = os.pipe()
        os.set_blocking(self.ready_pipe, False)
        try:
            # A process group of its own: a terminal's Ctrl-C reaches the supervisor, which stops children in order.
            self.process = subprocess.Popen(
                [*self.argv, "--secret-fd", str(read), "--ready-fd", str(ready_write)], env=env,
                pass_fds=(*self.pass_fds, read, ready_write), preexec_fn=die_with_parent, process_group=0)
        except BaseException:
            self._close_ready_pipe()
            raise
        finally:
            os.close(read)
            os.close(ready_write)
        self.started = time.monotonic()
        self.ready = False
        log.debug("started %s (pid %d)", self.name, self.process.pid)

    def check_ready(self) -> bool:
        """Whether this start has said it is ready (read from its pipe without waiting)."""
        if not self.ready and self.ready_pipe is not None:
            try:
                said = os.read(self.ready_pipe, len(READY))
            except BlockingIOError:
                return False
            self.ready = said == READY
            self._close_ready_pipe()  # said it, or closed it without (it exited): either way, done
        return self.ready

    def _close_ready_pipe(self) -> None:
        if self.ready_pipe is not None:
            os.close(self.ready_pipe)
            self.ready_pipe = None

    def overdue(self, now: float) -> bool:
        """Running, not ready, and past its READY_SECONDS."""
        return self.process is not None and not self.ready and now - self.started > READY_SECONDS[self.kind]

    def reap(self) -> int | None:
        """The exit status if it has exited, else None."""
        if self.process is None or (status := self.process.poll()) is None:
            return None
        self.check_ready()  # it may have said so just before it exited
        self._close_ready_pipe()
        self.process = None
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
        self._close_ready_pipe()


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
    them on SIGTERM (exit 0); SystemExit (status 1, one line) once a child cannot start or keeps crashing."""
    address = engine_address()
    env = dict(os.environ, EMBEDSEARCH_DATA_DIR=str(settings.data_dir), EMBEDSEARCH_HOST=settings.host,
               EMBEDSEARCH_PORT=str(settings.port), EMBEDSEARCH_WORKERS=str(workers))
    secret = secrets.token_bytes(SECRET_BYTES)
    engine = Child("engine", "engine", [*COMMAND, "engine", "--address", address], secret)
    children = [Child(f"worker {i + 1}", "worker", [*COMMAND, "worker", "--address", address, "--fd",
                                                    str(sock.fileno()), "--name", f"worker {i + 1}"],
                      secret, (sock.fileno(),)) for i in range(workers)]
    failed = ""
    serving = False
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    for child in [engine, *children]:
        child.start(env)
    while not stopping and not failed:
        now = time.monotonic()
        for child in [engine, *children]:
            child.check_ready()
            status = child.reap()
            if stopping:
                break
            if status is not None:
                ready = child.ready
                failed = child.policy.exited(status, ready, now) or ""
                if failed:
                    break
                log.error("%s %s%s; starting it again", child.name, exit_described(status),
                          "" if ready else " before it was ready")
                child.start(env)
            elif child.overdue(now):
                failed = (f"error: the {child.name} process was not ready within {READY_SECONDS[child.kind]:.0f} s "
                          "of its start (its log above says what it was doing); stopping the server")
                break
        if not serving and not failed and all(child.ready for child in [engine, *children]):
            serving = True
            log.info("serving on http://%s:%d with %d HTTP worker%s and one engine process", settings.host,
                     settings.port, workers, "" if workers == 1 else "s")
        time.sleep(0.1)
    if not failed:
        log.info("draining: the HTTP workers finish their requests, then the engine snapshots the indexes")
    sock.close()
    for child in children:
        child.signal(signal.SIGTERM)
    for child in children:
        child.wait(DRAIN_SECONDS)
    engine.signal(signal.SIGTERM)
    engine.wait(ENGINE_STOP_SECONDS)
    log.info("stopped")  # (after a failure too: every other process has gone)
    if failed:
        raise SystemExit(failed)
