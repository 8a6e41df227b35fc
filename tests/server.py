"""Run the real server (`python -m service serve`), and milvus-lite, as subprocesses on free loopback ports."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from benchmarks.server import ROOT, SERVE, Process, free_port, server_environment, service_ready

__all__ = ["ROOT", "MilvusLiteServer", "ServerProcess"]


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



class MilvusLiteServer(Process):
    """milvus-lite as a server of its own (``python -m milvus_lite server``) on a free loopback port: one Milvus
    that several service processes share, as they would share a cluster."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                          "--port", str(self.port)], data_dir.parent / f"milvus-{self.port}.log", cwd=ROOT)

    def start(self, timeout: float = 60.0) -> "MilvusLiteServer":
        super().start()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite exited with {self.proc.returncode}\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"milvus-lite not listening after {timeout:.0f} s\n{self.tail()}") from None
                time.sleep(0.1)
