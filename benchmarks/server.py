"""The server under test: a `python -m service serve` subprocess on a free loopback port, or a given URL."""

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
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the benchmark process dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Target:
    """Where requests go: ``url`` and the bearer ``api_key``."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.started_here = False
        self.env: dict[str, str] = {}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def wait_ready(self, timeout: float, proc: subprocess.Popen | None = None) -> float:
        """Poll GET /health until it says ready; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        status = "unreachable"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                status = httpx.get(self.url + "/health", timeout=5).json()["status"]
                if status == "ready":
                    return time.monotonic() - started
                if status == "error":
                    raise RuntimeError("server reports status `error` (a model failed to load)")
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server at {self.url} not ready after {timeout:.0f} s (last status: {status})")

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
        self.proc: subprocess.Popen | None = None
        self.started_here = True

    def start(self) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            cwd=ROOT,
            # Only the benchmark's settings: an EMBEDSEARCH_DATABASE_URL (say) in the caller's environment
            # must not point the throw-away server at a real database.
            env={**{k: v for k, v in os.environ.items() if not k.startswith("EMBEDSEARCH_")}, **self.env,
                 "PYTHONUNBUFFERED": "1"},
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        return self

    def wait_ready(self, timeout: float, proc: subprocess.Popen | None = None) -> float:
        try:
            return super().wait_ready(timeout, self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n--- server log ({self.log_path}) ---\n{self.tail()}") from None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def peer_server(argv: list[str], ready_url: str, log_path: Path, timeout: float = 120.0) -> Iterator[None]:
    """Run a peer's server (``argv``) for the duration of the block; it is ready once ``ready_url`` answers 200."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(argv, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{Path(argv[0]).name} exited with {proc.returncode} (log: {log_path})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ready_url} did not answer within {timeout:.0f} s (log: {log_path})")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
