"""A model of who owns what, checked against a real 2-worker server by random programs (issue #24).

Hypothesis drives a :class:`~hypothesis.stateful.RuleBasedStateMachine` over two tenants, two collection
names, dimensions 4 and 8 (vector-only collections, metric l2) and three document ids. Each rule goes
through a chosen worker (one pinned keep-alive connection per HTTP worker: tests/test_authority.py's
:func:`~tests.test_authority.pin_workers`): create, delete, make again (same name with the other
dimension, or the same name in the other tenant), upsert (sometimes with vectors of the wrong
dimension), delete, get and list documents, search, describe and list collections; and now and then
it kills the engine (SIGKILL; at most once per example and ``AUTHORITY_KILLS`` times per run, default
2), after which requests wait out its 503s ``engine_unavailable`` / ``model_loading`` (up to 30 s).

Every answer is checked against a plain Python model of what each tenant owns: the status code (200,
201, 400, 404 with its error code, 409), the documents and their vectors, the dimensions and counts; a
search for a stored vector finds a document with that vector first, and exactly the collection's
documents (a Flat index is exhaustive), so no tenant ever sees another's documents.

One server per database (SQLite, PostgreSQL) for all examples; each example has two new tenants and
deletes its collections when it ends. ``make test`` runs 15 examples of up to 40 steps per database
(``AUTHORITY_EXAMPLES``, ``AUTHORITY_STEPS``): 10-25 s each when every answer is right (at 25 steps, one
run in five missed the stale-worker bug of #24 on SQLite; at 40, none of twenty did); shrinking a
failure takes a minute or two more. For a longer hunt::

    AUTHORITY_EXAMPLES=500 AUTHORITY_STEPS=50 AUTHORITY_KILLS=20 \
        .venv/bin/python -m pytest -q tests/test_authority_model.py

(``--hypothesis-seed=N`` replays a run; Hypothesis prints the shrunk program of a failure.)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from tests.server import ServerProcess
from tests.test_authority import Worker, error_code, new_tenant, pin_workers, start_server
from tests.test_processes import role

pytestmark = pytest.mark.system

EXAMPLES = int(os.environ.get("AUTHORITY_EXAMPLES", "15"))
STEPS = int(os.environ.get("AUTHORITY_STEPS", "40"))
NAMES = ("n0", "n1")
IDS = ("a", "b", "c")
DIMENSIONS = (4, 8)
KILLS = int(os.environ.get("AUTHORITY_KILLS", "2"))  # engine kills per test run (each costs a few seconds)
RESTART_SECONDS = 120.0  # the engine back and every worker connected to it

workers_ = st.integers(0, 1)
tenants = st.integers(0, 1)
names = st.sampled_from(NAMES)
dimensions = st.sampled_from(DIMENSIONS)
doc_ids = st.sampled_from(IDS)
values = st.lists(st.integers(-3, 3), min_size=max(DIMENSIONS), max_size=max(DIMENSIONS))  # cut to a dimension


@dataclass
class Owned:
    """A collection as its tenant should see it."""

    dimension: int
    docs: dict[str, list[float]] = field(default_factory=dict)


def other(dimension: int) -> int:
    return DIMENSIONS[1 - DIMENSIONS.index(dimension)]


def describe(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path} -> {response.status_code} {response.text[:300]}"


def expect(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The JSON body of an answer that must have ``status`` (and, for an error, the error ``code``)."""
    assert response.status_code == status, f"expected {status} {code or ''}: {describe(response)}"
    if code is not None:
        assert error_code(response) == code, f"expected {status} {code}: {describe(response)}"
    return response.json()


@dataclass
class Run:
    """What the examples of one test run share."""

    kills_left: int = KILLS


class AuthorityModel(RuleBasedStateMachine):
    """Two tenants' collections through two workers, each answer checked against :attr:`owned`."""

    def __init__(self, server: ServerProcess, workers: list[Worker], run: Run) -> None:
        super().__init__()
        self.server, self.workers, self.run = server, workers, run
        self.keys = [new_tenant(server.url, f"model{t}") for t in range(2)]
        self.owned: list[dict[str, Owned]] = [{}, {}]  # per tenant: name -> collection
        self.killed = False

    # -- requests ---------------------------------------------------------------------------------------------
    def call(self, worker: int, tenant: int, method: str, path: str, **kwargs) -> httpx.Response:
        return self.workers[worker].retrying(method, path, self.keys[tenant], **kwargs)

    def create_expecting_model(self, worker: int, tenant: int, name: str, dimension: int) -> None:
        response = self.call(worker, tenant, "POST", "/v1/collections",
                             json={"name": name, "dimension": dimension, "metric": "l2"})
        if name in self.owned[tenant]:
            expect(response, 409, "collection_exists")
        else:
            body = expect(response, 201)
            assert (body["name"], body["dimension"], body["count"]) == (name, dimension, 0), describe(response)
            self.owned[tenant][name] = Owned(dimension)

    def delete_expecting_model(self, worker: int, tenant: int, name: str) -> None:
        response = self.call(worker, tenant, "DELETE", f"/v1/collections/{name}")
        if self.owned[tenant].pop(name, None) is not None:
            expect(response, 200)
        else:
            expect(response, 404, "collection_not_found")

    # -- collections ------------------------------------------------------------------------------------------
    @rule(worker=workers_, tenant=tenants, name=names, dimension=dimensions)
    def create(self, worker, tenant, name, dimension):
        self.create_expecting_model(worker, tenant, name, dimension)

    @rule(worker=workers_, tenant=tenants, name=names)
    def delete(self, worker, tenant, name):
        self.delete_expecting_model(worker, tenant, name)

    @rule(deleter=workers_, creator=workers_, tenant=tenants, name=names, to_other_tenant=st.booleans())
    def make_again(self, deleter, creator, tenant, name, to_other_tenant):
        """Delete `name` and make it again at once: with the other dimension, or in the other tenant."""
        old = self.owned[tenant].get(name)
        self.delete_expecting_model(deleter, tenant, name)
        dimension = other(old.dimension) if old is not None else DIMENSIONS[0]
        self.create_expecting_model(creator, 1 - tenant if to_other_tenant else tenant, name, dimension)

    @rule(worker=workers_, tenant=tenants, name=names)
    def describe_collection(self, worker, tenant, name):
        response = self.call(worker, tenant, "GET", f"/v1/collections/{name}")
        owned = self.owned[tenant].get(name)
        if owned is None:
            expect(response, 404, "collection_not_found")
        else:
            body = expect(response, 200)
            assert (body["dimension"], body["count"]) == (owned.dimension, len(owned.docs)), describe(response)

    @rule(worker=workers_, tenant=tenants)
    def list_collections(self, worker, tenant):
        body = expect(self.call(worker, tenant, "GET", "/v1/collections"), 200)
        listed = {c["name"]: (c["dimension"], c["count"]) for c in body["data"]}
        assert listed == {n: (c.dimension, len(c.docs)) for n, c in self.owned[tenant].items()}, (
            f"tenant {tenant} through worker {worker}: listed {listed}")

    # -- documents --------------------------------------------------------------------------------------------
    @rule(worker=workers_, tenant=tenants, name=names, ids=st.lists(doc_ids, min_size=1, max_size=3, unique=True),
          vectors=st.lists(values, min_size=3, max_size=3), wrong_dimension=st.booleans())
    def upsert(self, worker, tenant, name, ids, vectors, wrong_dimension):
        owned = self.owned[tenant].get(name)
        dimension = (owned.dimension if owned else DIMENSIONS[0])
        if wrong_dimension:
            dimension = other(dimension)
        docs = [{"id": i, "vector": [float(x) for x in v[:dimension]]} for i, v in zip(ids, vectors)]
        response = self.call(worker, tenant, "POST", f"/v1/collections/{name}/documents", json={"documents": docs})
        if owned is None:
            expect(response, 404, "collection_not_found")
        elif wrong_dimension:
            expect(response, 400)
        else:
            assert expect(response, 200)["ids"] == ids, describe(response)
            owned.docs.update({d["id"]: d["vector"] for d in docs})

    @rule(worker=workers_, tenant=tenants, name=names, doc_id=doc_ids)
    def delete_document(self, worker, tenant, name, doc_id):
        response = self.call(worker, tenant, "DELETE", f"/v1/collections/{name}/documents/{doc_id}")
        owned = self.owned[tenant].get(name)
        if owned is None:
            expect(response, 404, "collection_not_found")
        elif owned.docs.pop(doc_id, None) is None:
            expect(response, 404, "document_not_found")
        else:
            expect(response, 200)

    @rule(worker=workers_, tenant=tenants, name=names, doc_id=doc_ids)
    def get_document(self, worker, tenant, name, doc_id):
        response = self.call(worker, tenant, "GET", f"/v1/collections/{name}/documents/{doc_id}",
                             params={"include": "vector"})
        owned = self.owned[tenant].get(name)
        if owned is None:
            expect(response, 404, "collection_not_found")
        elif doc_id not in owned.docs:
            expect(response, 404, "document_not_found")
        else:
            body = expect(response, 200)
            assert (body["id"], body["vector"]) == (doc_id, owned.docs[doc_id]), describe(response)

    @rule(worker=workers_, tenant=tenants, name=names)
    def list_documents(self, worker, tenant, name):
        response = self.call(worker, tenant, "GET", f"/v1/collections/{name}/documents")
        owned = self.owned[tenant].get(name)
        if owned is None:
            expect(response, 404, "collection_not_found")
        else:
            ids = [d["id"] for d in expect(response, 200)["data"]]
            assert ids == sorted(owned.docs), describe(response)

    @rule(worker=workers_, tenant=tenants, name=names, pick=st.integers(0, len(IDS) - 1), fallback=values)
    def search(self, worker, tenant, name, pick, fallback):
        """A stored vector (or any, in an empty collection): exactly the collection's documents come back,
        one with that very vector first."""
        owned = self.owned[tenant].get(name)
        if owned is not None and owned.docs:
            stored = sorted(owned.docs)
            query = owned.docs[stored[pick % len(stored)]]
        else:
            query = [float(x) for x in fallback[:owned.dimension if owned else DIMENSIONS[0]]]
        response = self.call(worker, tenant, "POST", f"/v1/collections/{name}/search",
                             json={"vector": query, "top_k": len(IDS) + 1, "include": ["vector"]})
        if owned is None:
            expect(response, 404, "collection_not_found")
            return
        hits = expect(response, 200)["data"]
        assert sorted(h["id"] for h in hits) == sorted(owned.docs), describe(response)
        if hits:
            assert owned.docs[hits[0]["id"]] == query, f"not the exact match first: {describe(response)}"

    # -- the engine dies ---------------------------------------------------------------------------------------
    @rule(roll=st.integers(0, 15))
    def kill_engine(self, roll):
        """SIGKILL the engine now and then (roll 15 of 0-15; once per example and ``KILLS`` per run at most: decided
        here, not by a precondition, so that what Hypothesis draws never depends on earlier examples); wait until
        it is back and both workers are connected to it."""
        if roll != 15 or self.killed or self.run.kills_left <= 0:
            return
        self.killed = True
        self.run.kills_left -= 1
        (engine,) = role(self.server.proc.pid, "engine")
        os.kill(engine, signal.SIGKILL)
        deadline = time.monotonic() + RESTART_SECONDS
        while True:
            # Through both pinned connections at every turn: an idle one would be closed (uvicorn's 5 s keep-alive).
            ready = [worker.request("GET", "/ready", self.keys[0]).status_code == 200 for worker in self.workers]
            if all(ready) and role(self.server.proc.pid, "engine") not in ([engine], []):
                return
            assert time.monotonic() < deadline, f"the engine was not back within {RESTART_SECONDS:.0f} s"
            time.sleep(0.05)

    def teardown(self):
        """Delete what the example made, so that the next one starts from an empty database (best effort: a
        failure here was the example's to report)."""
        for tenant, owned in enumerate(self.owned):
            for name in NAMES:
                for worker in range(len(self.workers)):
                    self.call(worker, tenant, "DELETE", f"/v1/collections/{name}")
            owned.clear()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           models_file: Path) -> Iterator[ServerProcess]:
    with start_server(request.param, request, tmp_path_factory.mktemp(request.param) / "data", models_file) as s:
        yield s


def test_every_answer_matches_a_model_of_what_each_tenant_owns(server):
    """Random programs of creates, deletes, re-creates, writes, reads and engine kills through both workers:
    every answer is the model's."""
    workers, run = pin_workers(server.url, strict=False), Run()
    try:
        run_state_machine_as_test(
            lambda: AuthorityModel(server, workers, run),
            settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
                              suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                              phases=[Phase.generate, Phase.shrink]))
    finally:
        for worker in workers:
            worker.close()
