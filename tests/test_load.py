"""A real server under mixed load from 32 clients, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from index import VectorIndex
from tests.conftest import API_KEY
from tests.server import ServerProcess

pytestmark = pytest.mark.system

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CLIENTS = 32
DURATION = 60.0
WARM_UP = 15.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
def server(tmp_path: Path, models_file: Path):
    env = {"EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
           "EMBEDSEARCH_SNAPSHOT_SECONDS": "2", "EMBEDSEARCH_LOG_LEVEL": "WARNING"}
    proc = ServerProcess(tmp_path / "data", env).start()
    yield proc
    proc.stop()


async def client_loop(url: str, worker: int, deadline: float, counts: dict[int, int], errors: list[str]) -> None:
    rng = np.random.default_rng(worker)
    words = "the quick brown fox jumps over a lazy dog near the red apple tree".split()
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:
        i = 0
        while time.monotonic() < deadline:
            kind = ("embed", "upsert", "search", "text-search")[i % 4]
            text = " ".join(rng.choice(words, size=rng.integers(3, 30)))
            if kind == "embed":
                response = await client.post("/v1/embeddings", json={"model": "tiny", "input": [text] * 4})
            elif kind == "upsert":
                docs = [{"id": f"w{worker}-{rng.integers(0, 200)}", "text": text, "metadata": {"w": worker}}
                        for _ in range(10)]
                docs = list({d["id"]: d for d in docs}.values())
                response = await client.post("/v1/collections/load/documents", json={"documents": docs})
            elif kind == "search":
                response = await client.post("/v1/collections/load/search", json={
                    "vector": rng.standard_normal(64).tolist(), "top_k": 10, "filter": {"w": {"$lt": 16}}})
            else:
                response = await client.post("/v1/collections/load/search", json={"query": text, "top_k": 5})
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
            if response.status_code not in (200, 429, 503):
                errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
            i += 1


def test_mixed_load_has_no_errors_and_stable_memory(server: ServerProcess):
    httpx.post(server.url + "/v1/collections", json={"name": "load", "model": "tiny", "index": "HNSW32"},
               headers=AUTH).raise_for_status()
    counts: dict[int, int] = {}
    errors: list[str] = []
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append((time.monotonic() - start, rss_bytes(server.proc.pid)))

    sampler = threading.Thread(target=sample)
    sampler.start()

    async def run() -> None:
        deadline = time.monotonic() + DURATION
        await asyncio.gather(*(client_loop(server.url, w, deadline, counts, errors) for w in range(CLIENTS)))

    try:
        asyncio.run(run())
    finally:
        stop.set()
        sampler.join()
    assert not errors, errors[:5]
    assert counts.get(200, 0) > 500, counts
    after_warm_up = [rss for t, rss in samples if t >= WARM_UP]
    baseline = after_warm_up[0]
    growth = (max(after_warm_up[-5:]) - baseline) / baseline
    assert growth < 0.10, f"RSS grew {growth:.1%} after warm-up: {baseline} -> {after_warm_up[-5:]}"


def test_sigterm_drains_in_flight_requests_and_flushes_the_index(server: ServerProcess):
    client = httpx.Client(base_url=server.url, headers=AUTH, timeout=60)
    client.post("/v1/collections", json={"name": "drain", "model": "tiny"}).raise_for_status()
    words = "the quick brown fox jumps over a lazy dog".split()
    docs = [{"id": str(i), "text": " ".join(words[: 3 + i % 6] * 6)} for i in range(1000)]
    result: dict[str, httpx.Response] = {}
    request = threading.Thread(target=lambda: result.update(
        upsert=client.post("/v1/collections/drain/documents", json={"documents": docs})))
    request.start()
    time.sleep(0.3)  # the upsert is being embedded
    server.proc.send_signal(signal.SIGTERM)
    request.join(timeout=60)
    assert server.proc.wait(timeout=60) == 0
    assert result["upsert"].status_code == 200, result["upsert"].text
    assert result["upsert"].json()["upserted"] == 1000
    # the snapshot on disk reflects every write: nothing is left to replay
    db = sqlite3.connect(server.data_dir / "embedsearch.db")
    collection_id, last_position = db.execute("SELECT id, last_position FROM collections WHERE name='drain'").fetchone()
    index, position = VectorIndex.load(server.data_dir / "indexes" / f"{collection_id}.faiss")
    assert position == last_position and len(index) == 1000
