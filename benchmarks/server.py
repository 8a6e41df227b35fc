"""Servers on loopback: the one under test (a `python -m service serve` subprocess, or a given URL) and
peers' servers. :class:`Process` runs any of them; the tests that need a real server use it too."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVE = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent process dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def service_ready(response: httpx.Response) -> bool:
    """Whether the service's GET /health says ready (raises if it says a model failed to load)."""
    try:
        status = response.json()["status"]
    except (ValueError, KeyError, TypeError):
        return False
    if status == "error":
        raise RuntimeError("server reports status `error` (a model failed to load)")
    return status == "ready"


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
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
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
        return poll_ready(self.url + "/health", service_ready, timeout)

    def stop(self) -> None:
        pass


class ServerProcess(Target):
    """Start the real server as a subprocess (the way an operator runs it) and stop it with SIGTERM."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", "bench-" + secrets.token_urlsafe(16))
        self.data_dir = data_dir
        self.log_path = log_path
        self.env = {"EMBEDSEARCH_API_KEY": self.api_key, "EMBEDSEARCH_HOST": "127.0.0.1", **env}
        self.started_here = True
        self.process = Process([*SERVE, "--port", str(self.port), "--data-dir", str(data_dir)], log_path,
                               env=server_environment(self.env), cwd=ROOT)

    def start(self) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        return self

    def wait_ready(self, timeout: float) -> float:
        return self.process.wait_ready(self.url + "/health", service_ready, timeout)

    def stop(self) -> None:
        self.process.stop(grace=60)
