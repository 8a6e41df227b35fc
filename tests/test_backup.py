"""python -m service snapshot / restore, against a running app."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.server import ROOT

pytestmark = pytest.mark.integration


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args, "--data-dir", str(settings.data_dir)],
                          cwd=ROOT, capture_output=True, text=True)


async def test_snapshot_and_restore_while_the_server_runs(client, settings, tmp_path):
    await client.post("/v1/collections", json={"name": "src", "dimension": 4, "index": "HNSW32", "metric": "dot"})
    vectors = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    docs = [{"id": f"d{i}", "vector": v.tolist(), "text": f"t{i}", "metadata": {"i": i, "name": "ünï ✓"}}
            for i, v in enumerate(vectors)]
    await client.post("/v1/collections/src/documents", json={"documents": docs})
    await client.delete("/v1/collections/src/documents/d7")

    backup = tmp_path / "src.backup"
    done = cli(settings, "snapshot", "--tenant", "admin", "--collection", "src", "--out", str(backup))
    assert done.returncode == 0, done.stderr
    assert "299 documents" in done.stdout

    done = cli(settings, "restore", str(backup), "--tenant", "admin", "--name", "copy")
    assert done.returncode == 0, done.stderr
    copy = (await client.get("/v1/collections/copy")).json()
    assert copy["count"] == copy["indexed"] == 299
    assert copy["dimension"] == 4 and copy["index"] == "HNSW32" and copy["metric"] == "dot"
    assert (await client.get("/v1/collections/copy/documents/d7")).status_code == 404
    original = (await client.get("/v1/collections/src/documents/d5", params={"include": "vector"})).json()
    restored = (await client.get("/v1/collections/copy/documents/d5", params={"include": "vector"})).json()
    assert restored == original
    hits = (await client.post("/v1/collections/copy/search", json={"vector": vectors[42].tolist(), "top_k": 3})).json()
    expected = (await client.post("/v1/collections/src/search", json={"vector": vectors[42].tolist(), "top_k": 3})).json()
    assert [h["id"] for h in hits["data"]] == [h["id"] for h in expected["data"]]
    assert "copy" in [c["name"] for c in (await client.get("/v1/collections")).json()["data"]]
    # writes to the restored copy work and do not touch the original
    await client.post("/v1/collections/copy/documents", json={"documents": [{"id": "new", "vector": [1, 2, 3, 4]}]})
    assert (await client.get("/v1/collections/src/documents/new")).status_code == 404

    again = cli(settings, "restore", str(backup), "--tenant", "admin", "--name", "copy")
    assert again.returncode != 0 and "already exists" in again.stderr
    missing = cli(settings, "snapshot", "--tenant", "admin", "--collection", "nope", "--out", str(tmp_path / "x"))
    assert missing.returncode != 0 and "no collection" in missing.stderr
    not_backup = cli(settings, "restore", str(settings.data_dir / "embedsearch.db"), "--tenant", "admin")
    assert not_backup.returncode != 0
