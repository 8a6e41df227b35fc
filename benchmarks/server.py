"""Servers on loopback: the one under test (a `python -m service serve` subprocess, or a given URL) and
peers' servers. :class:`Process` runs any of them; the tests that need a real server use it too.
:class:`ProcessTreeCPU` reads the CPU time of a server and all its processes from /proc."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx

from service import supervisor

ROOT = Path(__file__).resolve().parents[1]
SERVE = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """In a child: SIGTERM when the benchmark dies, even by SIGKILL (Linux only): no server outlives a killed run."""
    supervisor.die_with_parent(signal.SIGTERM)


def service_ready(response: httpx.Response) -> bool:
    """Whether GET /ready says ready: every model loaded, every HTTP worker connected to the engine (raises if
    a model failed to load)."""
    try:
        models = response.json()["models"]
    except (ValueError, KeyError, TypeError):
        return False
    if "error" in models.values():
        raise RuntimeError("server reports a model in state `error` (it failed to load)")
    return response.status_code == 200


def poll_ready(url: str, ready: Callable[[httpx.Response], bool], timeout: float,
               exited: Callable[[], int | None] = lambda: None) -> float:
    """GET ``url`` until ``ready(response)``; returns the seconds waited. Raises RuntimeError when
    ``exited()`` gives an exit status, TimeoutError after ``timeout`` seconds."""
    started = time.monotonic()
    while True:
        code = exited()
        if code is not None:
            raise RuntimeError(f"the server exited with {code}")
        try:
            if ready(httpx.get(url, timeout=2)):
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{url} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def server_environment(settings: dict[str, str]) -> dict[str, str]:
    """The caller's environment without its ``EMBEDSEARCH_*`` settings, plus ``settings``: a throw-away server
    (a benchmark's, a test's) sees only the settings it is given, so that an exported
    EMBEDSEARCH_DATABASE_URL (say) never points it at a real database."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSEARCH_")}
    return {**clean, **settings, "PYTHONUNBUFFERED": "1"}


def process_tree(root: int) -> dict[int, int]:
    """CPU clock ticks of ``root`` and of each of its live descendants, by pid, from /proc/*/stat: user +
    system time of all its threads, plus that of its children that exited and were reaped (cutime, cstime).

    /proc/<pid>/task/*/children needs a kernel option that not every kernel has; one pass over
    /proc/*/stat gives every process's parent and times alike. Empty if ``root`` has exited.
    """
    parent, ticks = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        ticks[pid] = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    children = defaultdict(list)
    for pid, ppid in parent.items():
        children[ppid].append(pid)
    tree, todo = {}, [root] if root in ticks else []
    while todo:
        pid = todo.pop()
        tree[pid] = ticks[pid]
        todo += children[pid]
    return tree


class ProcessTreeCPU:
    """While open (``with``): the CPU time of a process and all its descendants (user + system), and how
    many processes the tree had.

    ``seconds`` is the change of the tree's total over the block; ``processes`` counts the pids seen at
    its start or end. A descendant that exits meanwhile keeps its CPU in the total when a process of the
    tree reaps it (it moves to the reaper's cutime/cstime); one that left the tree otherwise (its parent
    died first) takes its CPU with it, so that the figure comes out low.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seconds: float | None = None
        self.processes: int | None = None

    def __enter__(self) -> "ProcessTreeCPU":
        self._start = process_tree(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        end = process_tree(self.pid)
        self.seconds = (sum(end.values()) - sum(self._start.values())) / os.sysconf("SC_CLK_TCK")
        self.processes = len(self._start.keys() | end.keys())


class Process:
    """A server subprocess with its output appended to ``log_path``; stopped with SIGTERM (SIGKILL after
    ``grace`` seconds); on Linux it gets SIGTERM if its parent dies, so no server outlives a killed run."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv, self.log_path, self.env, self.cwd = argv, log_path, env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent if sys.platform == "linux" else None)
        return self

    def wait_ready(self, url: str, ready: Callable[[httpx.Response], bool], timeout: float) -> float:
        """:func:`poll_ready` while the process runs; on failure, stop it and raise with the log's tail."""
        try:
            return poll_ready(url, ready, timeout, self.proc.poll)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n--- log ({self.log_path}) ---\n{self.tail()}") from None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, grace: float = 30.0) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None


@contextmanager
def peer_server(argv: list[str], ready_url: str, log_path: Path, timeout: float = 120.0) -> Iterator[None]:
    """Run a peer's server (``argv``) for the duration of the block; it is ready once ``ready_url`` answers 200."""
    process = Process(argv, log_path).start()
    try:
        process.wait_ready(ready_url, lambda response: response.status_code == 200, timeout)
        yield
    finally:
        process.stop()


class Target:
    """Where requests go: ``url`` and the bearer ``api_key``."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.started_here = False

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def wait_ready(self, timeout: float) -> float:
        """Poll GET /health until it says ready; returns the seconds waited."""
        return poll_ready(self.url + "/ready", service_ready, timeout)

    def stop(self) -> None:
        pass


class ServerProcess(Target):
    """Start the real server as a subprocess (the way an operator runs it) and stop it with SIGTERM.

    ``env`` holds its settings (``EMBEDSEARCH_WORKERS=N`` for N HTTP worker processes beside an engine
    process, all children of the serve process); nothing else of the caller's EMBEDSEARCH_* reaches it.
    """

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", "bench-" + secrets.token_urlsafe(16))
        self.data_dir = data_dir
        self.log_path = log_path
        self.env = {"EMBEDSEARCH_API_KEY": self.api_key, "EMBEDSEARCH_HOST": "127.0.0.1", **env}
        self.started_here = True
        self.process = Process([*SERVE, "--port", str(self.port), "--data-dir", str(data_dir)], log_path,
                               env=server_environment(self.env), cwd=ROOT)

    @property
    def pid(self) -> int:
        """The serve process's (its workers and engine, if any, are its children)."""
        return self.process.proc.pid

    def start(self) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        return self

    def wait_ready(self, timeout: float) -> float:
        return self.process.wait_ready(self.url + "/ready", service_ready, timeout)

    def stop(self) -> None:
        """SIGTERM the serve process (it stops its own children); SIGKILL any of them it left behind."""
        if self.process.proc is None:
            return
        children = set(process_tree(self.pid)) - {self.pid}
        self.process.stop(grace=60)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone, as it should be
                pass
