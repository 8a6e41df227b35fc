"""Run the real server (`python -m service serve`) as a subprocess on a free loopback port."""

from __future__ import annotations

from pathlib import Path

from benchmarks.server import ROOT, SERVE, Process, free_port, server_environment, service_ready

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
        self.wait_ready(self.url + "/ready", service_ready, timeout)
        return self

