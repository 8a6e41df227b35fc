"""The process layout of `python -m service serve`: HTTP workers feeding one engine process (service/supervisor.py).

One real server with two workers: it starts and gets ready with every process, serves, answers 503 while its
engine is killed and restarted (losing nothing acknowledged), refuses work past a full engine queue with
503 and Retry-After, and drains on SIGTERM: a request in flight is answered, the indexes are snapshotted,
and every process exits.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.server import process_tree
from benchmarks.tiny_model import WORDS
from tests.conftest import API_KEY
from tests.server import ServerProcess

pytestmark = pytest.mark.system

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def children(pid: int) -> dict[int, str]:
    """Live descendants of ``pid``: pid -> command line."""
    found = {}
    for child in set(process_tree(pid)) - {pid}:
        try:
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def role(pid: int, name: str) -> list[int]:
    return [child for child, cmd in children(pid).items() if f" -m service {name} " in cmd]


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def ready(url: str) -> dict | None:
    try:
        response = httpx.get(url + "/ready", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def start_lines(log: str) -> dict[str, list[str]]:
    """The INFO lines up to the supervisor's "serving on": for each process (the supervisor is "")."""
    lines: dict[str, list[str]] = {}
    for line in log[:log.index(" service: serving on ")].splitlines():
        if found := re.match(r"\d\d:\d\d:\d\d INFO +(?:\[([^]]+)\] )?(.*)", line):
            lines.setdefault(found[1] or "", []).append(found[2])
    return lines


def test_two_workers_one_engine_restart_backpressure_and_drain(tmp_path: Path, models_file: Path):
    env = {"EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
           "EMBEDSEARCH_WORKERS": "2", "EMBEDSEARCH_QUEUE_MAX_INPUTS": "8"}
    server = ServerProcess(tmp_path / "data", env).start()
    pid = server.proc.pid
    try:
        # Started and ready: one engine, two workers, every one counted by /ready.
        assert len(role(pid, "engine")) == 1 and len(role(pid, "worker")) == 2
        body = ready(server.url)
        assert body["processes"] == {"engine": "ok", "workers": 2, "expected_workers": 2}
        # A quiet start: one INFO line a process, saying what it serves; the supervisor's once all are ready.
        started = start_lines(server.output())
        assert sorted(started) == ["", "engine", "worker 1", "worker 2"], started
        assert all(len(lines) == 1 for lines in started.values()), started
        assert started["engine"][0].startswith("service.engine: engine ready (pid ")
        assert "model tiny (dimension 64) on cpu" in started["engine"][0]
        assert started["worker 1"][0].startswith(f"service: serving http://127.0.0.1:{server.port} (pid ")
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            client.post("/v1/collections", json={"name": "c", "model": "tiny", "index": "Flat"}).raise_for_status()
            texts = [" ".join(WORDS[i:i + 4]) for i in range(0, 32, 4)]  # words the tiny model knows
            client.post("/v1/collections/c/documents", json={"documents": [
                {"id": str(i), "text": t} for i, t in enumerate(texts)]}).raise_for_status()
            # Each worker tokenises and reaches the one engine: many requests spread over both answer alike.
            for _ in range(6):
                with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as fresh:  # new connections
                    hits = fresh.post("/v1/collections/c/search", json={"query": texts[3], "top_k": 1}).json()
                    assert hits["data"][0]["id"] == "3"

            # Backpressure: more inputs than the engine's queue holds is a 503 with Retry-After, at once.
            refused = client.post("/v1/embeddings", json={"model": "tiny", "input": ["x"] * 9})
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "overloaded"

            # The engine dies: the workers answer 503 meanwhile, the supervisor starts a new one.
            (engine,) = role(pid, "engine")
            os.kill(engine, signal.SIGKILL)
            down = client.post("/v1/embeddings", json={"model": "tiny", "input": "hello"})
            assert down.status_code in (200, 503)  # 200 only if the new engine was already up
            if down.status_code == 503:
                assert down.json()["error"]["code"] in ("engine_unavailable", "model_loading")
                assert "retry-after" in down.headers
            wait_for(lambda: ready(server.url), what="ready again after the engine was killed")
            assert role(pid, "engine") != [engine] and len(role(pid, "worker")) == 2
            info = client.get("/v1/collections/c").json()
            assert info["count"] == info["indexed"] == 8  # what was acknowledged is back, from SQL
            # (each worker sees the new engine's model ready within its status poll, 0.2 s while one loads)
            found = wait_for(lambda: (r := client.post("/v1/collections/c/search", json={"query": texts[5], "top_k": 1})
                                      ).status_code == 200 and r.json(), 10, "searches served again")
            assert found["data"][0]["id"] == "5"

            # A worker dies (SIGKILL): the other one serves meanwhile, the supervisor starts a new one.
            killed = role(pid, "worker")[0]
            os.kill(killed, signal.SIGKILL)
            wait_for(lambda: len(role(pid, "worker")) == 2 and killed not in role(pid, "worker") and ready(server.url),
                     what="a new worker after one was killed")
            assert client.get("/v1/collections/c").json()["count"] == 8
            assert re.search(r"service: worker \d was killed by SIGKILL; starting it again", server.output())
            assert "service: engine was killed by SIGKILL; starting it again" in server.output()

        # SIGTERM drains: a request in flight (an upsert of 1,000 1024-d vectors: most of a second) gets its answer,
        # then the engine snapshots the indexes and every process exits.
        httpx.post(server.url + "/v1/collections", json={"name": "v", "dimension": 1024}, headers=AUTH).raise_for_status()
        vectors = np.random.default_rng(0).standard_normal((1000, 1024)).round(4).tolist()
        answer: dict = {}

        def slow_request() -> None:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
                answer["response"] = c.post("/v1/collections/v/documents", json={"documents": [
                    {"id": str(i), "vector": v} for i, v in enumerate(vectors)]})

        pids = [pid, *children(pid)]
        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert answer["response"].status_code == 200
        assert server.proc.wait(120) == 0
        for gone in pids:
            assert not alive(gone)
        assert list((tmp_path / "data" / "indexes").glob("*.faiss"))  # snapshotted on the way out
    finally:
        server.kill()
