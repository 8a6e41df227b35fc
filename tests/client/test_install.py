"""`pip install embedsearch` is the client alone: a fresh virtualenv gets httpx and numpy, never torch,
transformers or FAISS, and talks to the live server from there. And the client's copy of the server's
limits is the server's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from embedsearch import _api
from tests.conftest import API_KEY
from tests.server import ROOT, ServerProcess

SERVER_ONLY = {"torch", "transformers", "faiss-cpu", "faiss-gpu", "litestar", "sqlalchemy", "accelerate", "uvicorn"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


@pytest.mark.unit
def test_the_core_dependencies_are_the_clients():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert core == {"httpx", "numpy", "tqdm"}
    assert SERVER_ONLY - {"faiss-gpu"} <= {_name(r) for r in project["optional-dependencies"]["server"]}


@pytest.mark.unit
def test_the_clients_limits_are_the_servers():
    from service.domain import validation
    from service.settings import Settings

    defaults = Settings()
    assert _api.MAX_DOCUMENTS == validation.MAX_DOCUMENTS and _api.MAX_GET_IDS == validation.MAX_PAGE
    assert _api.MAX_DELETE_IDS == validation.MAX_DELETE_IDS and _api.MAX_QUERIES == validation.MAX_QUERIES
    assert _api.MAX_TOP_K == validation.MAX_TOP_K and _api.MAX_PAGE == validation.MAX_PAGE
    assert _api.MAX_SEARCH_HITS == validation.MAX_SEARCH_HITS and _api.MAX_INPUTS == defaults.max_inputs
    assert _api.BATCH_BYTES * 4 == defaults.max_body_bytes and _api.BATCH_TEXT_BYTES < defaults.max_request_tokens


CLIENT_RUN = """
import importlib.metadata
import importlib.resources
import sys
import embedsearch
assert embedsearch.__version__ == importlib.metadata.version("embedsearch"), embedsearch.__version__
assert importlib.resources.files("embedsearch").joinpath("py.typed").is_file()  # PEP 561
client = embedsearch.Client(sys.argv[1], sys.argv[2])
kb = client.create_collection("installed", dimension=3)
kb.upsert([{"id": "a", "vector": [1, 0, 0]}, {"id": "b", "vector": [0, 1, 0]}])
assert [h.id for h in kb.search(vector=[0.1, 0.9, 0], top_k=1)] == ["b"]
client.delete_collection("installed")
heavy = sorted(m for m in ("torch", "transformers", "faiss", "litestar", "sqlalchemy") if m in sys.modules)
assert not heavy, heavy
try:
    import embedsearch.langchain
except ModuleNotFoundError as exc:
    assert "pip install 'embedsearch[langchain]'" in str(exc), exc
else:
    raise AssertionError("langchain-core was installed")
print("client ok")
"""


@pytest.mark.system
def test_a_client_only_install_has_no_torch_and_works(tmp_path: Path, live: ServerProcess):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # the locked versions (without their hashes: a constraint file may not hold them)
    pins = [line.split()[0] for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line
            and not line.startswith((" ", "#"))]
    (tmp_path / "constraints.txt").write_text("\n".join(pins) + "\n")
    source = tmp_path / "source"  # a copy: pip builds in the tree it is given
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source)
    for package in ("embedsearch", "service", "index", "migrations"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(tmp_path / "constraints.txt"), str(source)],
                   check=True, timeout=600)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout
    installed = {_name(line) for line in listed.splitlines()}
    assert {"embedsearch", "httpx", "numpy"} <= installed and not installed & SERVER_ONLY, installed
    ran = subprocess.run([str(python), "-c", CLIENT_RUN, live.url, API_KEY], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert ran.returncode == 0 and "client ok" in ran.stdout, ran.stderr
    server = subprocess.run([str(venv / "bin" / "embedsearch"), "serve"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert server.returncode == 1 and "pip install 'embedsearch[server]'" in server.stderr, server.stderr
