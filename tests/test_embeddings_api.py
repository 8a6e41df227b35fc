"""The /v1/embeddings, /v1/models and /health contract, on tiny Gemma 3 models."""

from __future__ import annotations

import base64

import msgspec
import numpy as np
import pytest

from tests.conftest import AUTH, app_client

pytestmark = pytest.mark.integration


def vectors(response) -> np.ndarray:
    body = response.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    assert all(d["object"] == "embedding" for d in body["data"])
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


async def embed(client, **body):
    return await client.post("/v1/embeddings", json={"model": "tiny", **body})


def assert_error(response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


async def test_single_string_gives_one_normalised_vector(client):
    response = await embed(client, input="the quick brown fox", user="user-1234")
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "tiny"
    v = vectors(response)
    assert v.shape == (1, 64)
    assert np.linalg.norm(v[0]) == pytest.approx(1.0, abs=1e-5)
    # <bos> + 4 words
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


async def test_array_of_strings_keeps_order_and_counts_tokens(client):
    texts = ["the cat", "the quick brown fox jumps", "hello"]
    many = vectors(await embed(client, input=texts))
    one_by_one = np.concatenate([vectors(await embed(client, input=t)) for t in texts])
    np.testing.assert_allclose(many, one_by_one, atol=1e-5)
    body = (await embed(client, input=texts)).json()
    assert body["usage"]["prompt_tokens"] == 3 + 6 + 2


async def test_token_ids_match_text(client):
    text = vectors(await embed(client, input="the quick brown fox"))
    # ids of the tiny tokenizer: <bos>=2, then the words' ids
    ids = (await client.post("/v1/embeddings", json={"model": "tiny", "input": "the"})).json()
    assert ids["usage"]["prompt_tokens"] == 2
    from benchmarks.tiny_model import WORDS

    token_ids = [2] + [4 + WORDS.index(w) for w in "the quick brown fox".split()]
    np.testing.assert_allclose(vectors(await embed(client, input=token_ids)), text, atol=1e-5)
    both = vectors(await embed(client, input=[token_ids, token_ids[:3]]))
    np.testing.assert_allclose(both[0], text[0], atol=1e-5)
    assert both.shape == (2, 64)


async def test_base64_is_little_endian_float32_of_the_same_vectors(client):
    floats = vectors(await embed(client, input=["red apple", "blue sky"]))
    response = await embed(client, input=["red apple", "blue sky"], encoding_format="base64")
    assert response.status_code == 200
    decoded = np.array(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in response.json()["data"]]
    )
    np.testing.assert_array_equal(decoded, floats)


async def test_dimensions_truncates_and_renormalises(client):
    full = vectors(await embed(client, input="one two three"))[0]
    short = vectors(await embed(client, input="one two three", dimensions=16))[0]
    assert short.shape == (16,)
    np.testing.assert_allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)
    assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    assert vectors(await embed(client, input="one", dimensions=64)).shape == (1, 64)


async def test_last_token_pooling_and_dense_layers(client):
    mean = vectors(await embed(client, input="the lazy dog"))
    last = vectors(await client.post("/v1/embeddings", json={"model": "tiny-last", "input": "the lazy dog"}))
    assert not np.allclose(mean, last)
    dense = vectors(await client.post("/v1/embeddings", json={"model": "tiny-dense", "input": ["the lazy dog", "a"]}))
    assert dense.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(dense, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [[2, 5], "mixed"]}, "input"),
        ({"input": ["text", 5]}, "input"),
        ({"input": [2, 99999]}, "input"),
        ({"input": [[2, -1]]}, "input"),
        ({"input": 42}, "input"),
        ({"input": {"text": "x"}}, "input"),
        ({"input": [True]}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": 65}, "dimensions"),
        ({"input": "x", "dimensions": "eight"}, "dimensions"),
        ({"input": "x", "dimensions": 1.5}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": ["a"] * 2049}, "input"),
    ],
)
async def test_bad_input_is_a_400_naming_the_parameter(client, body, param):
    assert_error(await embed(client, **body), 400, param=param)


async def test_missing_fields_and_wrong_types(client):
    assert_error(await client.post("/v1/embeddings", json={"input": "x"}), 400, param="model")
    assert_error(await client.post("/v1/embeddings", json={"model": "tiny"}), 400, param="input")
    assert_error(await client.post("/v1/embeddings", json=["tiny"]), 400)
    assert_error(await client.post("/v1/embeddings", json={"model": 3, "input": "x"}), 400, param="model")


async def test_over_long_input_is_refused_unless_truncation_is_asked(client):
    long_text = " ".join(["dog"] * 100)  # 101 tokens, the tiny model allows 64
    error = assert_error(await embed(client, input=["fine", long_text]), 400, param="input")
    assert "input[1]" in error["message"] and "64" in error["message"]
    assert error["code"] == "context_length_exceeded"
    response = await embed(client, input=long_text, truncate=True)
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 64
    np.testing.assert_allclose(
        vectors(response), vectors(await embed(client, input=" ".join(["dog"] * 63))), atol=1e-5
    )


async def test_unknown_model_is_404_model_not_found(client):
    response = await client.post("/v1/embeddings", json={"model": "gpt-nope", "input": "x"})
    assert_error(response, 404, param="model", code="model_not_found")
    # known to the registry but not served here
    response = await client.post("/v1/embeddings", json={"model": "gemma3:12b", "input": "x"})
    assert_error(response, 404, code="model_not_found")
    assert_error(await client.get("/v1/models/gpt-nope"), 404, code="model_not_found")


async def test_malformed_json_and_oversized_body(client):
    response = await client.post("/v1/embeddings", content=b'{"model": "tiny", "input": ', headers={"content-type": "application/json"})
    assert_error(response, 400)
    response = await client.post(
        "/v1/embeddings", content=b'{"model": "tiny", "input": "' + b"a" * (33 * 1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 413, code="request_too_large")


async def test_models_list_and_get_in_openai_shape(client):
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny", "tiny-last", "tiny-dense"]
    for model in body["data"]:
        assert model["object"] == "model" and isinstance(model["created"], int) and model["owned_by"]
    one = (await client.get("/v1/models/tiny-last")).json()
    assert one["id"] == "tiny-last" and one["object"] == "model"


async def test_health_needs_no_key_and_reports_readiness(client):
    response = await client.get("/health", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": {"tiny": "ready", "tiny-last": "ready", "tiny-dense": "ready"}}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}, {"Authorization": "Bearer "}],
)
async def test_every_route_but_health_needs_a_valid_key(client, headers):
    del client.headers["Authorization"]
    for method, path in [("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("GET", "/v1/models/tiny")]:
        response = await client.request(method, path, json={"model": "tiny", "input": "x"}, headers=headers)
        assert_error(response, 401, code="invalid_api_key")
    assert (await client.get("/v1/models", headers=AUTH)).status_code == 200


async def test_tokens_summed_across_a_requests_inputs_are_limited(settings):
    """`EMBEDSEARCH_MAX_REQUEST_TOKENS` (here 64), counted after truncation, for collections' texts too."""
    async with app_client(msgspec.structs.replace(settings, max_request_tokens=64)) as client:
        fox = "the quick brown fox"  # 5 tokens with <bos>
        at_limit = await embed(client, input=[fox] * 12 + ["the quick brown"])
        assert at_limit.status_code == 200, at_limit.text
        assert at_limit.json()["usage"]["prompt_tokens"] == 64
        error = assert_error(await embed(client, input=[fox] * 13), 400, param="input", code="max_tokens_per_request")
        assert "65 tokens" in error["message"] and "64" in error["message"]
        assert_error(await embed(client, input=[[2, 5, 6, 7, 8]] * 13), 400, param="input")
        long_text = " ".join(["dog"] * 100)  # 101 tokens, cut to the model's 64
        assert (await embed(client, input=long_text, truncate=True)).status_code == 200
        assert_error(await embed(client, input=[long_text, "dog"], truncate=True), 400, param="input")

        created = await client.post("/v1/collections", json={"name": "kb", "model": "tiny"})
        assert created.status_code == 201, created.text
        documents = [{"id": str(i), "text": fox} for i in range(13)]
        response = await client.post("/v1/collections/kb/documents", json={"documents": documents})
        assert_error(response, 400, param="documents", code="max_tokens_per_request")
        response = await client.post("/v1/collections/kb/documents", json={"documents": documents[:12]})
        assert response.status_code == 200, response.text


async def test_the_callers_tenant_is_the_encoders_fairness_key(client, monkeypatch):
    from service.engine.batcher import Batcher

    keys: list[str] = []
    embed_for = Batcher.embed

    async def spy(self, sequences, *, key, timeout=None):
        keys.append(key)
        return await embed_for(self, sequences, key=key, timeout=timeout)

    monkeypatch.setattr(Batcher, "embed", spy)
    assert (await embed(client, input="hello")).status_code == 200
    assert keys == ["admin"]  # the tenant of EMBEDSEARCH_API_KEY
