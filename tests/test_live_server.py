"""The real server process on loopback: the official openai client, key management, first start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.server import ROOT, ServerProcess

pytestmark = [pytest.mark.system, pytest.mark.filterwarnings("ignore::ResourceWarning")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_file: Path):
    """A server with no configured key: it must make an admin key itself and print it once."""
    root = tmp_path_factory.mktemp("live")
    proc = ServerProcess(root / "data", {"EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
                                         "EMBEDSEARCH_API_KEY": ""}).start()
    yield proc
    assert proc.stop() == 0


def generated_admin_key(server: ServerProcess) -> str:
    lines = [line.strip() for line in server.output().splitlines() if line.strip().startswith("es-")]
    assert len(lines) == 1, server.output()
    return lines[0]


def test_first_start_generates_an_admin_key_and_never_runs_open(server: ServerProcess):
    key = generated_admin_key(server)
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    db = (server.data_dir / "embedsearch.db").read_bytes()
    assert key.encode() not in db  # only the hash is stored


def test_openai_client_float_base64_and_dimensions(server: ServerProcess):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=generated_admin_key(server))
    texts = ["the quick brown fox", "hello world"]
    default = client.embeddings.create(model="tiny", input=texts)  # the client asks for base64 itself
    floats = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 64
    np.testing.assert_allclose(
        np.array([d.embedding for d in default.data]), np.array([d.embedding for d in floats.data]), atol=1e-6
    )
    assert default.usage.prompt_tokens == default.usage.total_tokens == 5 + 3
    short = client.embeddings.create(model="tiny", input="hello world", dimensions=8)
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (8,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"

    import openai

    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="nope", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input="")
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.url + "/v1", api_key="wrong").embeddings.create(model="tiny", input="x")


def test_keys_create_works_while_the_server_runs(server: ServerProcess):
    result = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "acme", "--data-dir", str(server.data_dir)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("es-")
    response = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": "x"},
                          headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert key not in (server.data_dir / "embedsearch.db").read_bytes().decode("latin-1")


def test_langchain_openai_embeddings_work_unchanged(server: ServerProcess):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: otherwise LangChain sends tiktoken ids, meaningless to Gemma
    embeddings = OpenAIEmbeddings(model="tiny", base_url=server.url + "/v1", api_key=generated_admin_key(server),
                                  check_embedding_ctx_length=False)
    documents = embeddings.embed_documents(["hello world", "the lazy dog"])
    query = embeddings.embed_query("hello world")
    assert len(documents) == 2 and len(documents[0]) == 64
    np.testing.assert_allclose(query, documents[0], atol=1e-6)


def test_llamaindex_openai_like_embedding_works_unchanged(server: ServerProcess):
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embedding = OpenAILikeEmbedding(model_name="tiny", api_base=server.url + "/v1", api_key=generated_admin_key(server))
    one = embedding.get_text_embedding("hello world")
    batch = embedding.get_text_embedding_batch(["hello world", "red apple"])
    assert len(one) == 64 and len(batch) == 2
    np.testing.assert_allclose(one, batch[0], atol=1e-6)


def test_a_test_server_sees_only_the_settings_it_is_given(tmp_path, monkeypatch):
    """An exported EMBEDSEARCH_DATABASE_URL must not point the kill -9 tests at a real database."""
    monkeypatch.setenv("EMBEDSEARCH_DATABASE_URL", "postgresql+psycopg://prod/db")
    monkeypatch.setenv("EMBEDSEARCH_API_KEY", "the operator's")
    env = ServerProcess(tmp_path / "data", {"EMBEDSEARCH_MODELS": "tiny"}).env
    assert "EMBEDSEARCH_DATABASE_URL" not in env and "EMBEDSEARCH_API_KEY" not in env
    assert env["EMBEDSEARCH_MODELS"] == "tiny" and env["PATH"] == os.environ["PATH"]
