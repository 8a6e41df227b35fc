"""Property-based fuzzing of every route, driven by the server's own OpenAPI schema (schemathesis).

The app runs in-process through schemathesis' ASGI transport, which runs its lifespan: a tiny
model is loaded, documents go to a real SQLite file and real FAISS indexes. Every documented
operation gets positive cases (valid per the schema) and negative ones (invalid per the schema),
generated deterministically (Hypothesis ``derandomize``, no example database) and bounded in number
and time, and every response is checked:

* ``not_a_server_error``: never a 5xx;
* ``status_code_conformance``: the status is one the operation documents;
* ``content_type_conformance`` and ``response_headers_conformance``;
* ``response_schema_conformance``: the body matches the documented schema for that status, the
  OpenAI error shape included (service/api/responses.py documents it on every route).

Random strings rarely name an existing collection or a served model, so half of the cases are
aimed at two seeded collections (one embedding texts with the tiny model, one vector-only) and a
seeded document, and positive request bodies are "steered" towards values the server can accept
(a served model, a valid collection name, vectors of the right length, one query kind) while the
rest of the body stays random. The test then asserts that every operation answered at least one
success, so the fuzzer demonstrably reaches the real code paths and response schemas.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings, strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.settings import Settings
from tests.conftest import API_KEY, AUTH

pytestmark = pytest.mark.system

# Per operation and per mode (positive, negative), and the time for all operations together (each
# (operation, mode) gets an equal share). EMBEDSEARCH_FUZZ_EXAMPLES / _SECONDS raise them for a deeper
# run; EMBEDSEARCH_FUZZ_RANDOM=1 draws new cases instead of the fixed, derandomized ones.
EXAMPLES_PER_MODE = int(os.environ.get("EMBEDSEARCH_FUZZ_EXAMPLES", 25))
TIME_BUDGET_S = float(os.environ.get("EMBEDSEARCH_FUZZ_SECONDS", 40))
DERANDOMIZE = os.environ.get("EMBEDSEARCH_FUZZ_RANDOM", "") != "1"
BASE = "http://testserver"

SEEDED = "fuzz"  # embeds texts with the tiny model
SEEDED_VECTORS = "fuzzvec"  # vector-only
DIMENSION = 4  # of SEEDED_VECTORS
SEEDED_DOC = "doc-1"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@dataclass
class Fuzzed:
    schema: Any  # schemathesis' OpenApiSchema, loaded from the app's /docs/openapi.json
    session: Any  # a requests.Session whose requests go into the app


@pytest.fixture(scope="module")
def fuzzed(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    from service.api.app import create_app

    app = create_app(Settings(
        data_dir=tmp_path_factory.mktemp("fuzz") / "data", api_key=API_KEY, models="tiny",
        models_file=str(models_file), batch_wait_ms=1, snapshot_seconds=3600,
    ))
    try:
        schema = schemathesis.openapi.from_asgi("/docs/openapi.json", app)
        with asgi.get_client(app) as session:
            deadline = time.monotonic() + 120
            while session.get(f"{BASE}/health").json()["status"] != "ready":
                assert time.monotonic() < deadline, "models did not load"
                time.sleep(0.05)
            session.headers.update(AUTH)
            yield Fuzzed(schema, session)
    finally:
        asgi.shutdown_lifespans()  # runs the app's shutdown (snapshots, model threads, engine)


def seed(session: Any) -> None:
    """(Re)create the seeded collections and documents; a fuzzed DELETE may have removed them."""
    base = f"{BASE}/v1/collections"
    for name, body in ((SEEDED, {"model": "tiny"}), (SEEDED_VECTORS, {"dimension": DIMENSION, "metric": "l2"})):
        if session.get(f"{base}/{name}").status_code == 404:
            assert session.post(base, json={"name": name, **body}).status_code == 201
    for name, docs in (
        (SEEDED, [{"id": SEEDED_DOC, "text": "the quick brown fox", "metadata": {"n": 1, "tag": "a"}},
                  {"id": "doc-2", "text": "hello world", "metadata": {"n": 2, "tag": "b"}}]),
        (SEEDED_VECTORS, [{"id": SEEDED_DOC, "vector": [1, 0, 0, 0]}, {"id": "doc-2", "vector": [0, 1, 0, 0]}]),
    ):
        if any(session.get(f"{base}/{name}/documents/{d['id']}").status_code == 404 for d in docs):
            assert session.post(f"{base}/{name}/documents", json={"documents": docs}).status_code == 200


# One request per operation that must succeed: its response is checked against the documented 200
# schema whatever the fuzzer manages to reach. (method, path) -> [Case arguments].
KNOWN_GOOD: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("POST", "/v1/embeddings"): [{"body": {"model": "tiny", "input": ["hello", "world"]}},
                                 {"body": {"model": "tiny", "input": [2, 4, 5], "encoding_format": "base64"}}],
    ("GET", "/v1/models/{model_id}"): [{"path_parameters": {"model_id": "tiny"}}],
    ("POST", "/v1/collections"): [{"body": {"name": "known-good", "dimension": 3, "metric": "dot"}}],
    ("GET", "/v1/collections/{name}"): [{"path_parameters": {"name": SEEDED}}],
    ("DELETE", "/v1/collections/{name}"): [{"path_parameters": {"name": SEEDED_VECTORS}}],
    ("GET", "/v1/collections/{name}/documents/{doc_id}"): [
        {"path_parameters": {"name": SEEDED, "doc_id": SEEDED_DOC}, "query": {"include": "vector"}}],
    ("DELETE", "/v1/collections/{name}/documents/{doc_id}"): [
        {"path_parameters": {"name": SEEDED_VECTORS, "doc_id": "doc-2"}}],
    ("POST", "/v1/collections/{name}/documents/delete"): [
        {"path_parameters": {"name": SEEDED_VECTORS}, "body": {"ids": ["doc-2", "nope"]}}],
    ("POST", "/v1/collections/{name}/documents/get"): [
        {"path_parameters": {"name": SEEDED}, "body": {"ids": ["nope", SEEDED_DOC], "include": ["vector"]}}],
    ("GET", "/v1/collections/{name}/documents"): [
        {"path_parameters": {"name": SEEDED}, "query": {"limit": 1, "filter": '{"n": {"$gte": 1}}'}}],
    ("POST", "/v1/collections/{name}/documents"): [
        {"path_parameters": {"name": SEEDED}, "body": {"documents": [{"id": "new", "text": "red apple"}]}}],
    ("POST", "/v1/collections/{name}/search"): [
        {"path_parameters": {"name": SEEDED}, "body": {"query": "a fox", "top_k": 2, "filter": {"tag": "a"}}},
        {"path_parameters": {"name": SEEDED}, "body": {"queries": ["a", "b"], "include": ["vector"]}},
        {"path_parameters": {"name": SEEDED_VECTORS}, "body": {"vector": [1, 0, 0, 0], "min_score": -1e9}},
        {"path_parameters": {"name": SEEDED}, "body": {"query": "a fox", "mode": "hybrid", "explain": True,
                                                       "fusion": {"method": "weighted", "alpha": 0.3}}},
        {"path_parameters": {"name": SEEDED}, "body": {"queries": ["fox", "hello"], "mode": "keyword"}}],
    ("POST", "/v1/keys"): [{"body": {"tenant": "fuzz-tenant"}}],
}


def known_good(op: Any, session: Any) -> list[dict[str, Any]]:
    """KNOWN_GOOD's requests for ``op``; revoking needs a key made for it."""
    if (op.method.upper(), op.path) == ("DELETE", "/v1/keys/{key_id}"):
        key_id = session.post(f"{BASE}/v1/keys", json={"tenant": "fuzz-revoked"}).json()["id"]
        return [{"path_parameters": {"key_id": key_id}}]
    return KNOWN_GOOD.get((op.method.upper(), op.path), [{}])


# -- steering: keep the generated body, but make the parts a random value never gets right valid --


def _vector(value: object) -> list[float]:
    numbers = [float(x) for x in value if isinstance(x, (int, float)) and math.isfinite(x)] if isinstance(
        value, list) else []
    numbers = [max(-1e6, min(1e6, x)) for x in numbers]
    return (numbers + [0.5] * DIMENSION)[:DIMENSION]


def _text(value: object) -> str:
    return value if isinstance(value, str) and value.strip() else "hello world"


def steer(case: Any) -> Any:
    body = case.body
    name = (case.path_parameters or {}).get("name")
    key = (case.method.upper(), case.operation.path)
    if key == ("POST", "/v1/embeddings") and isinstance(body, dict):
        body["model"] = "tiny"
        body.pop("dimensions", None)
    elif key == ("POST", "/v1/collections") and isinstance(body, dict):
        body["name"] = "f-" + re.sub(r"[^A-Za-z0-9_-]", "", str(body.get("name")))[:60]
        if body.get("model") is not None:
            body["model"] = "tiny"
            body.pop("dimension", None)
        else:
            body["dimension"] = 1 + abs(body["dimension"]) % 64 if isinstance(body.get("dimension"), int) else 8
        body.pop("index", None)
    elif key == ("POST", "/v1/collections/{name}/documents") and isinstance(body, dict):
        docs = body.get("documents") or [{}]
        for i, doc in enumerate(docs[:20]):
            doc["id"] = f"{doc.get('id')}-{i}"[:200] if isinstance(doc.get("id"), str) else None
            if name == SEEDED_VECTORS:
                doc["vector"] = _vector(doc.get("vector"))
            else:
                doc.pop("vector", None)
                doc["text"] = _text(doc.get("text"))
        body["documents"] = docs[:20]
    elif key == ("POST", "/v1/collections/{name}/search") and isinstance(body, dict):
        for field in ("query", "vector", "queries", "vectors"):
            body.pop(field, None)
        if name == SEEDED_VECTORS:
            body["vector"] = _vector(body.get("vector"))
        else:
            body["query"] = _text(body.get("query"))
        body["top_k"] = 1 + abs(body["top_k"]) % 1000 if isinstance(body.get("top_k"), int) else 3
        body.pop("filter", None)
        if not isinstance(body.get("min_score"), (int, float)) or not math.isfinite(body["min_score"]):
            body.pop("min_score", None)
    elif key == ("POST", "/v1/collections/{name}/documents/delete") and isinstance(body, dict):
        body.pop("filter", None)
        if not isinstance(body.get("ids"), list):
            body["ids"] = ["no-such-id"]
    elif key == ("GET", "/v1/collections/{name}/documents") and isinstance(case.query, dict):
        case.query.pop("cursor", None)
        case.query.pop("filter", None)
        if isinstance(case.query.get("limit"), int):
            case.query["limit"] = 1 + abs(case.query["limit"]) % 1000
    return case


def strategy(operation: Any, mode: GenerationMode) -> st.SearchStrategy:
    """Cases for one operation: purely generated ones, plus ones aimed at the seeded data."""
    names = {p.name for p in operation.path_parameters}
    options = [operation.as_strategy(generation_mode=mode)]
    fixed: list[dict[str, str]] = []
    if "name" in names:
        fixed = [{"name": SEEDED}, {"name": SEEDED_VECTORS}]
        if "doc_id" in names:
            fixed = [{**f, "doc_id": SEEDED_DOC} for f in fixed]
    elif "model_id" in names:
        fixed = [{"model_id": "tiny"}]
    elif mode is GenerationMode.POSITIVE and len(operation.body):
        fixed = [{}]
    for path_parameters in fixed:
        aimed = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None)
        options.append(aimed.map(steer) if mode is GenerationMode.POSITIVE else aimed)
    return st.one_of(options)


def test_fuzz_every_operation_from_the_openapi_schema(fuzzed: Fuzzed) -> None:
    ops = [result.ok() for result in fuzzed.schema.get_all_operations()]
    assert len(ops) >= 14, [op.label for op in ops]
    failures: list[str] = []
    statuses: dict[str, Counter] = {op.label: Counter() for op in ops}
    started = time.monotonic()
    runs = [(op, mode) for op in ops for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            # with only string path parameters there is nothing to get wrong
            if mode is GenerationMode.POSITIVE or len(op.query) or len(op.body)]
    share = TIME_BUDGET_S / len(runs)
    for op in ops:
        for arguments in known_good(op, fuzzed.session):
            seed(fuzzed.session)
            case = op.Case(media_type="application/json" if "body" in arguments else None, **arguments)
            try:
                response = case.call_and_validate(headers=AUTH, checks=CHECKS)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{op.label} [known good {arguments}]: {exc}")
                continue
            assert response.status_code in (200, 201), (op.label, arguments, response.text)
            statuses[op.label][response.status_code] += 1
    for op, mode in runs:
        run_started = time.monotonic()

        @hypothesis_settings(
            max_examples=EXAMPLES_PER_MODE, deadline=None, derandomize=DERANDOMIZE, database=None,
            phases=[Phase.explicit, Phase.generate], print_blob=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy(op, mode))
        def run(case: Any) -> None:
            if time.monotonic() - run_started > share:
                return  # this operation's share of the time is used up
            seed(fuzzed.session)
            response = case.call_and_validate(headers=AUTH, checks=CHECKS)
            statuses[op.label][response.status_code] += 1

        try:
            run()
        except Unsatisfiable:
            pass
        except Exception as exc:  # noqa: BLE001 - collect every operation's failures, then report them all
            failures.append(f"{op.label} [{mode.value}]: {exc}")
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {sum(sum(c.values()) for c in statuses.values())} requests in {elapsed:.1f} s")
    for label, counts in statuses.items():
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert not failures, "\n\n".join(failures)
    for label, counts in statuses.items():  # the known-good requests at least
        assert counts[200] + counts[201] > 0, (label, counts)
    assert elapsed < TIME_BUDGET_S + 20, elapsed
