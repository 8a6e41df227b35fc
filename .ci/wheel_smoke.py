"""The installed wheel, used as a newcomer would: migrate, serve, one embedding, one upsert and search.

Run by .ci/wheel-check with the Python of a fresh virtualenv that holds the wheel (not the checkout),
from a working directory outside the checkout: ``python wheel_smoke.py PATH/TO/benchmarks/tiny_model.py``.
Standard library only (plus what the wheel installs). Every wait has a deadline; exit 1 on any failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

KEY = "wheel-smoke-key"
READY_TIMEOUT = 180.0


def fail(message: str) -> None:
    print(f"wheel check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def call(url: str, body: dict | None = None, *, method: str | None = None, timeout: float = 60.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method or ("POST" if body is not None else "GET"),
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(tiny_model_py: str) -> None:
    import service

    where = Path(service.__file__).resolve()
    if "site-packages" not in where.parts:
        fail(f"`service` was imported from {where}, not from the installed wheel")
    if importlib.util.find_spec("benchmarks") is not None:
        fail("the wheel installs `benchmarks` at the top level")
    work = Path(tempfile.mkdtemp(prefix="wheel-smoke-", dir=Path.cwd()))  # the caller removes its cwd
    spec = importlib.util.spec_from_file_location("tiny_model", tiny_model_py)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    model = tiny.save_tiny_gemma(work / "tiny")
    models_file = work / "models.json"
    models_file.write_text(json.dumps({"models": {"tiny": {"source": str(model), "max_tokens": 64}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSEARCH_")}
    env.update(EMBEDSEARCH_DATA_DIR=str(work / "data"), EMBEDSEARCH_MODELS="tiny", EMBEDSEARCH_API_KEY=KEY,
               EMBEDSEARCH_MODELS_FILE=str(models_file), PYTHONUNBUFFERED="1")
    migrated = subprocess.run([sys.executable, "-m", "service", "migrate"], env=env, cwd=work,
                              capture_output=True, text=True, timeout=120)
    if migrated.returncode != 0:
        fail(f"`python -m service migrate` exited {migrated.returncode}:\n{migrated.stderr[-3000:]}")
    print(migrated.stdout.strip())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port)], env=env, cwd=work,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if server.poll() is not None:
                fail(f"the server exited {server.returncode} before it was ready")
            try:
                status, body = call(base + "/ready", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                fail(f"/ready did not answer 200 within {READY_TIMEOUT:.0f} s")
            time.sleep(0.2)
        print(f"/ready: {body}")
        status, body = call(base + "/v1/embeddings", {"model": "tiny", "input": ["hello world"]})
        if status != 200 or len(body["data"][0]["embedding"]) != 64:
            fail(f"embeddings answered {status}: {body}")
        status, body = call(base + "/v1/collections", {"name": "smoke", "model": "tiny"})
        if status != 201:
            fail(f"creating a collection answered {status}: {body}")
        docs = [{"id": "pets", "text": "the cat sat on the mat"}, {"id": "fruit", "text": "apple banana cherry"}]
        status, body = call(base + "/v1/collections/smoke/documents", {"documents": docs})
        if status != 200 or body["upserted"] != 2:
            fail(f"the upsert answered {status}: {body}")
        status, body = call(base + "/v1/collections/smoke/search", {"query": "apple banana cherry", "top_k": 2})
        if status != 200 or [hit["id"] for hit in body["data"]][:1] != ["fruit"]:
            fail(f"the search answered {status}: {body}")
        print(f"embedding, upsert and search answered; top hit {body['data'][0]['id']!r}")
        for page in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/console", "/console/console.js"):
            with urllib.request.urlopen(base + page, timeout=30) as response:  # raises on an error status
                if len(response.read()) < 500:
                    fail(f"{page} is nearly empty: the wheel lacks the web pages' files")
        print("the docs viewer and the console are served from the wheel")
    except SystemExit:
        log.seek(0)
        print(log.read()[-5000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1])
