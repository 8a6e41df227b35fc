"""Run the real server (`python -m service serve`) as a subprocess on a free loopback port."""

from __future__ import annotations

from pathlib import Path

import httpx

from benchmarks.server import ROOT, SERVE, Process, free_port, server_environment

__all__ = ["ROOT", "ServerProcess"]


class ServerProcess(Process):
    """The caller's environment, less its ``EMBEDSEARCH_*`` settings, plus ``env``; the log beside ``data_dir``;
    ready once /ready says so (every HTTP worker connected to the engine, every model loaded)."""

    def __init__(self, data_dir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([*SERVE, "--port", str(self.port), "--data-dir", str(data_dir)],
                         data_dir.parent / f"server-{self.port}.log",
                         env=server_environment(env), cwd=ROOT)

    def start(self, timeout: float = 300.0) -> "ServerProcess":
        super().start()
        self.wait_ready(self.url + "/ready", ready, timeout)
        return self


def ready(response: httpx.Response) -> bool:
    """Whether GET /ready says ready (raises if a model failed to load)."""
    try:
        models = response.json()["models"]
    except (ValueError, KeyError, TypeError):
        return False
    if "error" in models.values():
        raise RuntimeError("server reports a model in state `error` (it failed to load)")
    return response.status_code == 200
