"""kill -9 in the middle of a stream of writes loses nothing that was acknowledged."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import API_KEY
from tests.server import ServerProcess
from tests.test_processes import alive, children, wait_for

pytestmark = pytest.mark.system

AUTH = {"Authorization": f"Bearer {API_KEY}"}
DIM = 16


def text(batch_no: int, n: int) -> str:
    """A document's text: a keyword no other write has (a replacement brings a new one)."""
    return f"written in t{batch_no}q{n}"


def writer(url: str, name: str, acked: dict[str, list[float]], deleted: set[str], in_flight: dict,
           stop: threading.Event, texts: dict[str, str]) -> None:
    """Upsert batches (some replacing earlier ids) and delete now and then, recording what was
    acknowledged (vectors and texts), and what was sent but not answered when the server died (it may
    or may not have landed)."""
    rng = np.random.default_rng(7)
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        batch_no = 0
        while not stop.is_set():
            ids = [f"doc-{batch_no}-{i}" for i in range(20)]
            if batch_no > 3:  # replace a few documents written earlier
                ids[:3] = [f"doc-{rng.integers(0, batch_no)}-{i}" for i in range(3)]
            vectors = rng.standard_normal((20, DIM)).astype(np.float32)
            in_flight.clear()
            in_flight.update({i: v.tolist() for i, v in zip(ids, vectors)})
            try:
                response = client.post(f"/v1/collections/{name}/documents", json={"documents": [
                    {"id": i, "vector": v.tolist(), "metadata": {"batch": batch_no}, "text": text(batch_no, n)}
                    for n, (i, v) in enumerate(zip(ids, vectors))]})
            except httpx.HTTPError:
                return  # the server died under us: this batch was never acknowledged
            if response.status_code == 200:
                for n, (i, v) in enumerate(zip(ids, vectors)):
                    acked[i] = v.tolist()
                    texts[i] = text(batch_no, n)
                    deleted.discard(i)
            if batch_no % 5 == 4:
                victim = f"doc-{batch_no - 1}-5"
                in_flight.clear()
                in_flight[victim] = None  # a delete
                try:
                    if client.delete(f"/v1/collections/{name}/documents/{victim}").status_code == 200:
                        acked.pop(victim, None)
                        deleted.add(victim)
                except httpx.HTTPError:
                    return
            batch_no += 1


@pytest.mark.parametrize(("index", "backend"), [("Flat", "faiss"), ("HNSW32", "faiss"), ("HNSW32", "milvus")])
def test_sigkill_mid_stream_loses_no_acknowledged_write(tmp_path: Path, models_file: Path, index: str, backend: str):
    """On either backend (Milvus: milvus-lite in the engine process, killed with it)."""
    env = {"EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
           "EMBEDSEARCH_SNAPSHOT_SECONDS": "0.3", "EMBEDSEARCH_WORKERS": "2",  # SIGKILL takes the engine too
           "EMBEDSEARCH_VECTOR_BACKEND": backend}
    server = ServerProcess(tmp_path / "data", env).start()
    try:
        httpx.post(server.url + "/v1/collections", json={"name": "c", "dimension": DIM, "index": index},
                   headers=AUTH, timeout=30).raise_for_status()
        acked: dict[str, list[float]] = {}
        deleted: set[str] = set()
        in_flight: dict[str, list[float] | None] = {}
        texts: dict[str, str] = {}
        stop = threading.Event()
        thread = threading.Thread(target=writer, args=(server.url, "c", acked, deleted, in_flight, stop, texts))
        thread.start()
        time.sleep(2.5)  # several snapshots happen meanwhile
        processes = [server.proc.pid, *children(server.proc.pid)]
        server.kill()
        stop.set()
        thread.join(timeout=30)
        for pid in processes:  # the engine and the workers die with the server
            wait_for(lambda: not alive(pid), 10, f"process {pid} to die")
    finally:
        server.kill()
    assert len(acked) > 100

    server = ServerProcess(tmp_path / "data", env).start()
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            info = client.get("/v1/collections/c").json()
            assert info["count"] == info["indexed"]
            # everything acknowledged is there (the one unanswered upsert or delete may have landed too)
            assert len(acked) - 1 <= info["count"] <= len(acked) + 20
            for doc_id, vector in acked.items():
                doc = client.get(f"/v1/collections/c/documents/{doc_id}", params={"include": "vector"})
                if doc_id in in_flight:  # the unanswered write may have landed
                    if in_flight[doc_id] is None and doc.status_code == 404:
                        continue
                    if doc.status_code == 200 and np.allclose(doc.json()["vector"], in_flight[doc_id] or vector):
                        continue
                assert doc.status_code == 200, doc_id
                np.testing.assert_allclose(doc.json()["vector"], vector, rtol=1e-6)
            for doc_id in deleted - set(in_flight):
                assert client.get(f"/v1/collections/c/documents/{doc_id}").status_code == 404
            sample = [(i, v) for i, v in acked.items() if i not in in_flight][:: max(1, len(acked) // 40)]
            found = client.post("/v1/collections/c/search", json={"vectors": [v for _, v in sample], "top_k": 1}).json()
            assert [hits[0]["id"] for hits in found["data"]] == [doc_id for doc_id, _ in sample]
            # the keyword index, rebuilt from SQL, has every acknowledged text and none it replaced
            keyword = client.post("/v1/collections/c/search", json={
                "queries": [texts[i].split()[-1] for i, _ in sample], "mode": "keyword", "top_k": 2}).json()
            assert [[h["id"] for h in hits] for hits in keyword["data"]] == [[doc_id] for doc_id, _ in sample]
            gone = [doc_id for doc_id in deleted - set(in_flight) if doc_id in texts]
            if gone:
                keyword = client.post("/v1/collections/c/search", json={
                    "queries": [texts[i].split()[-1] for i in gone], "mode": "keyword"}).json()
                assert keyword["data"] == [[] for _ in gone]
    finally:
        assert server.stop() == 0
