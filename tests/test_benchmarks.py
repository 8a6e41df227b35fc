"""`python -m benchmarks --quick` runs end to end and writes results.json, report.md and PNG plots.

The run uses a tiny random Gemma 3 (registered through a models file) instead of gemma3:270m, so that
it takes under a minute; the real model is the default of the command. No timing is asserted: only
the structure of the results, and that every figure is a positive, finite number.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.tiny_model import save_tiny_gemma

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["embeddings", "upsert", "search"]


def figures(node, path: str = ""):
    """Every number below ``node`` (booleans are flags, not figures), with its path."""
    if isinstance(node, bool) or node is None or isinstance(node, str):
        return
    if isinstance(node, (int, float)):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from figures(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from figures(value, f"{path}[{i}]")


def test_quick_benchmark_writes_json_markdown_and_plots(tmp_path: Path):
    model = save_tiny_gemma(tmp_path / "tiny")
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"models": {"tiny": {"source": str(model), "max_tokens": 1024}}}))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--model", "tiny", "--models-file", str(models_file),
         "--models-dir", str(tmp_path / "models"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True
    assert results["machine"]["cpu"] and results["machine"]["cores_logical"] >= 1
    assert {"python", "torch", "faiss", "litestar"} <= set(results["versions"])
    assert results["settings"]["models"] == "tiny"
    for name in SUITES:
        suite = results["suites"][name]
        assert suite["status"] == "ok", suite
        assert suite["cases"], name
        for case in suite["cases"]:
            assert {"service", "baseline", "ratio"} <= set(case), case
    assert results["suites"]["peers"]["status"] in ("ok", "skipped")

    embeddings = results["suites"]["embeddings"]
    assert {c["concurrency"] for c in embeddings["cases"]} >= {1, 16}
    assert all({"p50_ms", "p95_ms", "p99_ms", "inputs_per_s", "tokens_per_s"} <= set(c["service"])
               for c in embeddings["cases"])
    assert {t["name"].split()[0] for t in embeddings["targets"]} == {"latency", "throughput"}
    upsert = results["suites"]["upsert"]
    assert {(c["input"], c["index"], c["batch"]) for c in upsert["cases"]} >= {
        ("vectors (base64)", "Flat", 100), ("vectors (base64)", "Flat", 1000), ("vectors (base64)", "HNSW32", 100),
        ("vectors (base64)", "HNSW32", 1000), ("vectors (JSON floats)", "Flat", 1000), ("texts", "Flat", 100),
        ("texts", "HNSW32", 100)}
    search = results["suites"]["search"]
    assert len(search["targets"]) == sum(c["concurrency"] == 16 for c in search["cases"]) > 0
    front = results["suites"]["front"]
    assert front["status"] == "ok"
    assert {c["route"] for c in front["cases"]} == {"models", "embeddings", "search"}
    assert all(c["server_cpu_ms_per_request"] > 0 for c in front["cases"])
    assert [t["target"] for t in front["targets"]] == ["<= 0.2 ms", "<= 0.3 ms", "<= 0.4 ms"]
    assert {re.match("[A-Za-z]+", c["index"]).group() for c in search["cases"]} == {"Flat", "HNSW", "IVF"}
    assert {c["filter"] == "none" for c in search["cases"]} == {True, False}
    assert all(0 < c["service"]["recall_at_10"] <= 1 for c in search["cases"])
    assert search["curves"]
    stall = results["suites"]["stall"]
    assert stall["status"] == "ok" and stall["target"]["value"] > 0
    alone, trickled = stall["phases"].values()
    assert alone["requests"] > 0 and trickled["requests"] > 0 and alone["writes"] == 0 < trickled["writes"]

    numbers = list(figures({name: results["suites"][name] for name in SUITES}))
    assert len(numbers) > 100
    bad = [(path, value) for path, value in numbers if not (math.isfinite(value) and value > 0)]
    assert not bad, bad

    report = (out / "report.md").read_text()
    for suite in ("front", "embeddings", "search", "stall"):
        assert f"| {suite} | " in report  # its targets in the table of all targets
    for heading in ("## Machine", "## Targets", "## Front", "## Embeddings", "## Upsert", "## Search", "## Stall", "## Peers"):
        assert heading in report
    plots = sorted(out.glob("*.png"))
    assert plots, "no plot written"
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    for plot in plots:
        assert f"]({plot.name})" in report


def test_peers_report_sets_each_peer_beside_the_service():
    """The peers section renders a measured peer as a side-by-side table and a missing one as skipped."""
    from benchmarks.report import _peers_md

    def search(qps: float, recall: float) -> dict:
        return {"qps": qps, "p50_ms": 1000 / qps, "recall_at_10": recall}

    suite = {"peers": {
        "chroma": {"status": "ok", "version": "1.5.9", "size": 100000, "server": "chroma run",
                   "index": {"ours": "HNSW32", "chroma": {"max_neighbors": 16}},
                   "cases": [{"workload": "upsert", "batch": 1000, "ours": {"docs_per_s": 3000.0},
                              "chroma": {"docs_per_s": 1500.0}, "ratio": {"throughput": 2.0}},
                             {"workload": "search", "filter": "bucket=3 (10%)", "concurrency": 16,
                              "ours": search(400.0, 0.99), "chroma": search(100.0, 0.95), "ratio": {"qps": 4.0}}]},
        "llama.cpp": {"status": "ok", "gguf": "/cache/gemma.gguf", "threads": 2, "pooled": False,
                      "cases": [{"length": "short", "concurrency": 16, "ours": {"inputs_per_s": 30.0, "p50_ms": 500.0},
                                 "llama.cpp": {"inputs_per_s": 6.0, "p50_ms": 2800.0}, "ratio": {"throughput": 5.0}}]},
    }}
    report = "\n".join(_peers_md(suite))
    assert "| upsert, batch 1000 |  |  | 3,000 docs/s | 1,500 docs/s |" in report
    assert "| search | bucket=3 (10%) | 16 | 400 QPS | 100 QPS | 2.50 | 10.0 | 0.990 | 0.950 | 400% |" in report
    assert "| short | 16 | 30.0 | 6.00 | 500 | 2,800 | 500% |" in report
    assert "gemma.gguf, 2 threads" in report and "one vector per token" in report
    skipped = {"peers": {"llama.cpp": {"status": "skipped", "reason": "not installed (pip install 'llama-cpp-python[server]')"}}}
    assert _peers_md(skipped)[0] == "- llama.cpp: skipped: not installed (pip install 'llama-cpp-python[server]')"
