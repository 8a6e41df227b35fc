"""`python -m benchmarks --quick` runs end to end and writes results.json, report.md and PNG plots.

The run uses a tiny random Gemma 3 (registered through a models file) instead of gemma3:270m, so that
it takes about a minute; the real model is the default of the command. No timing is asserted: only
the structure of the results, and that every figure is a positive, finite number. The load generator's
client processes and the server CPU meter are checked on their own, against a stub server and a
process tree of known CPU.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.load import RequestFailed, embedding_counts, run_process_load
from benchmarks.server import ProcessTreeCPU, Target
from benchmarks.tiny_model import save_tiny_gemma

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["embeddings", "upsert", "search", "workers"]  # every figure of these is checked


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


@pytest.mark.benchmark
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
    for name in ("embeddings", "upsert", "search"):
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
    assert {c["concurrency"]: c["service"]["client_processes"] for c in embeddings["cases"]} == {1: 1, 16: 4}
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
    assert all(c["requests"] == 1000 and c["client_processes"] == 4 and c["server_processes"] >= 1
               for c in front["cases"])
    workers = results["suites"]["workers"]
    assert workers["status"] == "ok" and workers["concurrency"] == 64
    assert [(c["workers"], c["route"]) for c in workers["cases"]] == [
        (0, "embeddings"), (0, "search"), (1, "embeddings"), (1, "search"), (2, "embeddings"), (2, "search")]
    for case in workers["cases"]:
        assert case["requests"] == 1000 and case["client_processes"] == 4, case
        assert case["server_processes"] == (1 if case["workers"] == 0 else case["workers"] + 2), case
        assert {"requests_per_s", "server_cpu_ms_per_request", "p50_ms", "p99_ms"} <= set(case), case
        assert ("ratio" in case) == (case["workers"] == 2), case
    assert [t["target"] for t in front["targets"]] == ["<= 0.2 ms", "<= 0.3 ms", "<= 0.4 ms"]
    assert {re.match("[A-Za-z]+", c["index"]).group() for c in search["cases"]} == {"Flat", "HNSW", "IVF"}
    assert {c["filter"] == "none" for c in search["cases"]} == {True, False}
    assert all(0 < c["service"]["recall_at_10"] <= 1 for c in search["cases"])
    assert search["curves"]
    hybrid = results["suites"]["hybrid"]
    assert hybrid["status"] == "ok", hybrid
    assert {(c["mode"], c["filter"] == "none") for c in hybrid["cases"]} == {
        (mode, unfiltered) for mode in ("dense", "keyword", "hybrid") for unfiltered in (True, False)}
    assert all(c["overlap_at_10_with_bm25s"] > 0.9 and c["ratio"]["qps"] > 0 for c in hybrid["cases"]
               if c["mode"] == "keyword" and c["filter"] == "none")
    stall = results["suites"]["stall"]
    assert stall["status"] == "ok" and stall["target"]["value"] > 0
    alone, trickled = stall["phases"].values()
    assert alone["requests"] > 0 and trickled["requests"] > 0 and alone["writes"] == 0 < trickled["writes"]

    numbers = list(figures({name: results["suites"][name] for name in SUITES}))
    assert len(numbers) > 100
    # A worker count is a setting, not a figure (0: everything in one process).
    bad = [(path, value) for path, value in numbers
           if not (math.isfinite(value) and value > 0) and not re.search(r"\.workers(\[\d+\])?$", path)]
    assert not bad, bad

    report = (out / "report.md").read_text()
    for suite in ("front", "embeddings", "search", "stall"):
        assert f"| {suite} | " in report  # its targets in the table of all targets
    for heading in ("## Machine", "## Targets", "## Front", "## Workers", "## Embeddings", "## Upsert", "## Search",
                    "## Stall", "## Peers"):
        assert heading in report
    assert "| 2 | search | 1000 |" in report  # the workers table
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


class _Stub(BaseHTTPRequestHandler):
    """GET /ok and POST /v1/embeddings answer 200 (keep-alive); anything else 404."""

    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path == "/ok":
            self._answer(200, {"ok": True})
        else:
            self._answer(404, {"error": "no such path"})

    def do_POST(self) -> None:
        size = len(self.rfile.read(int(self.headers["Content-Length"])))
        self._answer(200, {"data": [{"embedding": "AAAA"}], "usage": {"prompt_tokens": size}})

    def log_message(self, *args) -> None:
        pass


def test_process_load_spreads_requests_over_client_processes_and_fails_on_errors():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = Target(f"http://127.0.0.1:{server.server_address[1]}", "key")
    try:
        got = run_process_load(target, "/ok", None, total=300, concurrency=8, processes=3, warmup=6)
        assert (got.requests, got.processes, got.inputs, got.tokens) == (300, 3, 300, 0)
        assert len(got.latencies_s) == 300 and (got.latencies_s > 0).all() and got.elapsed_s > 0
        assert got.summary()["client_processes"] == 3
        bodies = [b"x" * 10, b"y" * 20]  # request i sends bodies[i % 2]: tokens are the bytes the stub saw
        got = run_process_load(target, "/v1/embeddings", bodies, total=100, concurrency=6, counts=embedding_counts)
        assert (got.requests, got.processes, got.inputs, got.tokens) == (100, 4, 100, 50 * 10 + 50 * 20)
        with pytest.raises(RequestFailed, match="404"):
            run_process_load(target, "/missing", None, total=50, concurrency=4)
    finally:
        server.shutdown()


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"


def test_process_tree_cpu_counts_descendants_live_and_reaped():
    """A process whose one child burns 0.3 s of CPU and is reaped, and another burns 0.3 s and lives on:
    both count, and the two live processes are seen."""
    live = BURN + "print('burnt', flush=True)\ntime.sleep(60)"
    script = ("import subprocess, sys\n"
              "print('ready', flush=True); sys.stdin.readline()\n"
              f"subprocess.run([sys.executable, '-I', '-c', {BURN!r}])\n"
              f"live = subprocess.Popen([sys.executable, '-I', '-c', {live!r}])\n"
              "sys.stdin.readline(); live.kill()\n")
    proc = subprocess.Popen([sys.executable, "-I", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        with ProcessTreeCPU(proc.pid) as cpu:
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "burnt\n"  # the live child's, after the other one's exit
        assert cpu.processes == 2
        assert 0.6 <= cpu.seconds < 5, cpu.seconds
    finally:
        try:
            proc.communicate("\n", timeout=30)  # it kills its live child and exits
        except (subprocess.TimeoutExpired, OSError):
            proc.kill()
            proc.wait()
