"""Who may touch a collection, and the engine, when HTTP workers are several (issue #24).

A real server with ``EMBEDSEARCH_WORKERS=2``, on SQLite and on PostgreSQL (one server per database for the
module; each test makes tenants and collection names of its own). A test holds one keep-alive connection
to each worker (:func:`pin_workers`: workers are told apart by the process prefix of the ``X-Request-ID``
they answer with), so it decides which worker serves each request:

- a worker that saw a collection before another worker deleted it must not go on serving it: not another
  tenant's collection that took its id (SQLite hands a deleted row's id to the next row), not a collection
  made again under its name with another dimension;
- a DELETE answered 200 means the collection is gone for every worker;
- the engine's socket answers only this server's workers: a process of another uid, or one of the same
  uid without the per-start secret, is hung up on before a frame is decoded.

Helpers (:class:`Worker`, :func:`pin_workers`, :func:`new_tenant`, :func:`start_server`) are shared with
tests/test_authority_model.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.engine import protocol
from tests.conftest import API_KEY
from tests.postgres import fresh_database
from tests.server import ServerProcess
from tests.test_processes import children, role

pytestmark = pytest.mark.system

ADMIN = {"Authorization": f"Bearer {API_KEY}"}
REQUEST_ID_PREFIX = 16  # X-Request-ID's leading hex digits: the answering process's (service/observability/logging.py)
NOBODY = 65534  # the uid/gid a foreign local user runs as
RETRY_CODES = ("engine_unavailable", "model_loading")  # 503s of an engine that is restarting


# -- the harness -----------------------------------------------------------------------------------------------
class WorkerMoved(AssertionError):
    """A pinned connection was answered by another worker (its connection was closed and opened again)."""


class Worker:
    """One keep-alive connection to one HTTP worker (``max_connections=1``), its process told by ``prefix``.

    Every answer is checked to come from that worker. ``strict``: another worker's answer raises
    :class:`WorkerMoved` (a test whose point is which worker serves what); otherwise the connection is
    pinned again to the same worker for the next request and the answer is returned.
    """

    def __init__(self, url: str, client: httpx.Client, prefix: str, strict: bool = True) -> None:
        self.url, self.client, self.prefix, self.strict = url, client, prefix, strict
        self.moved = 0

    def __repr__(self) -> str:
        return f"Worker({self.prefix})"

    def request(self, method: str, path: str, key: str, **kwargs) -> httpx.Response:
        response = self.client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
        answered_by = response.headers["x-request-id"][:REQUEST_ID_PREFIX]
        if answered_by != self.prefix:
            if self.strict:
                raise WorkerMoved(f"{method} {path}: pinned to worker {self.prefix}, answered by {answered_by}")
            self.moved += 1
            self.client.close()
            self.client = _connect_to(self.url, self.prefix)
        return response

    def retrying(self, method: str, path: str, key: str, timeout: float = 30.0, **kwargs) -> httpx.Response:
        """:meth:`request`, again while the answer is a 503 of a restarting engine (at most ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.request(method, path, key, **kwargs)
            if response.status_code != 503 or error_code(response) not in RETRY_CODES or time.monotonic() > deadline:
                return response
            time.sleep(0.05)

    def get(self, path: str, key: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, key, **kwargs)

    def post(self, path: str, key: str, json: object) -> httpx.Response:
        return self.request("POST", path, key, json=json)

    def delete(self, path: str, key: str) -> httpx.Response:
        return self.request("DELETE", path, key)

    def close(self) -> None:
        self.client.close()


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1))


def _answering_prefix(client: httpx.Client) -> str:
    return client.get("/health").headers["x-request-id"][:REQUEST_ID_PREFIX]


def _connect_to(url: str, prefix: str, timeout: float = 30.0) -> httpx.Client:
    """A new one-connection client whose connection the worker ``prefix`` accepted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = _client(url)
        if _answering_prefix(client) == prefix:
            return client
        client.close()
    raise TimeoutError(f"no connection reached worker {prefix} within {timeout:.0f} s")


def pin_workers(url: str, count: int = 2, strict: bool = True, timeout: float = 30.0) -> list[Worker]:
    """One :class:`Worker` per HTTP worker: new connections until ``count`` different workers have answered."""
    found: dict[str, httpx.Client] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} workers reached within {timeout:.0f} s")
            client = _client(url)
            prefix = _answering_prefix(client)
            if prefix in found:
                client.close()
            else:
                found[prefix] = client
    except BaseException:
        for client in found.values():
            client.close()
        raise
    return [Worker(url, client, prefix, strict) for prefix, client in found.items()]


def new_tenant(url: str, name: str) -> str:
    """The key of a new tenant ``name-<random>`` (made with the admin key)."""
    response = httpx.post(url + "/v1/keys", json={"tenant": f"{name}-{uuid.uuid4().hex[:8]}"}, headers=ADMIN,
                          timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["key"]


def error_code(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def is_collection_not_found(response: httpx.Response) -> bool:
    return response.status_code == 404 and error_code(response) == "collection_not_found"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def start_server(database: str, request: pytest.FixtureRequest, data_dir: Path, models_file: Path,
                 **env: str) -> Iterator[ServerProcess]:
    """A 2-worker server on SQLite (in ``data_dir``) or on a fresh database of the session's PostgreSQL."""
    settings = {"EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny",
                "EMBEDSEARCH_MODELS_FILE": str(models_file), "EMBEDSEARCH_WORKERS": "2", **env}
    with contextlib.ExitStack() as stack:
        if database == "postgresql":
            settings["EMBEDSEARCH_DATABASE_URL"] = stack.enter_context(
                fresh_database(request.getfixturevalue("postgres_url")))
        server = ServerProcess(data_dir, settings)
        stack.callback(server.kill)
        yield server.start()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           models_file: Path) -> Iterator[ServerProcess]:
    with start_server(request.param, request, tmp_path_factory.mktemp(request.param) / "data", models_file) as s:
        yield s


@pytest.fixture
def workers(server: ServerProcess) -> Iterator[list[Worker]]:
    pinned = pin_workers(server.url)
    yield pinned
    for worker in pinned:
        worker.close()


def answers(cases: dict[str, httpx.Response], ok) -> dict[str, str]:
    """The cases whose answer ``ok`` refuses, as `status body` (for one assertion listing all of them)."""
    return {what: f"{r.status_code} {r.text[:300]}" for what, r in cases.items() if not ok(r)}


# -- 1. no tenant reaches another's collection through a stale worker ---------------------------------------------
def test_a_worker_that_saw_a_deleted_collection_never_serves_another_tenants_collection(server, workers):
    """acme's `notes` is deleted through worker 1, beta's `payroll` made through worker 1 (on SQLite it gets
    `notes`' id), beta stores `secret`. Worker 2, which served `notes` before, must answer each of acme's
    requests to `notes` with 404 collection_not_found (search, get and list documents, upsert, describe,
    delete), and beta's collection must stay as beta left it (no `planted`, not deleted)."""
    w1, w2 = workers
    acme, beta = new_tenant(server.url, "acme"), new_tenant(server.url, "beta")
    notes, payroll = unique("notes"), unique("payroll")
    docs = f"/v1/collections/{notes}/documents"

    assert w1.post("/v1/collections", acme, {"name": notes, "dimension": 4}).status_code == 201
    assert w1.post(docs, acme, {"documents": [{"id": "mine", "vector": [1, 0, 0, 0]}]}).status_code == 200
    seen = w2.post(f"/v1/collections/{notes}/search", acme, {"vector": [1, 0, 0, 0], "top_k": 5})
    assert seen.status_code == 200 and [h["id"] for h in seen.json()["data"]] == ["mine"]  # worker 2 knows `notes`

    assert w1.delete(f"/v1/collections/{notes}", acme).status_code == 200
    assert w1.post("/v1/collections", beta, {"name": payroll, "dimension": 4}).status_code == 201
    secret = {"id": "secret", "text": "salaries of everyone", "vector": [0, 1, 0, 0]}
    assert w1.post(f"/v1/collections/{payroll}/documents", beta, {"documents": [secret]}).status_code == 200

    def beta_holds() -> list[str]:
        """beta's `payroll` as each worker lists it: its document ids, or the error."""
        held = []
        for worker in workers:
            r = worker.get(f"/v1/collections/{payroll}/documents", beta)
            held.append(" ".join(d["id"] for d in r.json()["data"]) if r.status_code == 200
                        else f"{r.status_code} {error_code(r)}")
        return held

    cases = {
        "search": w2.post(f"/v1/collections/{notes}/search", acme, {"vector": [0, 1, 0, 0], "top_k": 5}),
        "get document": w2.get(f"{docs}/secret", acme),
        "list documents": w2.get(docs, acme),
        "upsert": w2.post(docs, acme, {"documents": [{"id": "planted", "vector": [0, 0, 1, 0]}]}),
        "describe": w2.get(f"/v1/collections/{notes}", acme),
    }
    before_delete = beta_holds()
    cases["delete collection"] = w2.delete(f"/v1/collections/{notes}", acme)
    after_delete = beta_holds()
    leaked = answers(cases, is_collection_not_found)
    assert not leaked and before_delete == after_delete == ["secret", "secret"], (
        f"acme's deleted `{notes}` still answered through worker 2: {json.dumps(leaked, indent=1)}\n"
        f"beta's `{payroll}` through workers 1, 2 after acme's upsert: {before_delete}; after acme's delete: "
        f"{after_delete}")
    w1.delete(f"/v1/collections/{payroll}", beta)


# -- 2. a collection made again is the new one for every worker ----------------------------------------------------
CHECKS = ("describe", "list", "search 8", "search 4", "upsert 4", "upsert 8")  # 8 values: 200; 4 values: 400


def as_dimension_8(worker: Worker, key: str, name: str, check: str) -> str | None:
    """None if ``check`` through ``worker`` answers as for `name` of dimension 8, else what it answered."""
    if check == "describe":
        r = worker.get(f"/v1/collections/{name}", key)
        ok = r.status_code == 200 and r.json()["dimension"] == 8
    elif check == "list":
        r = worker.get("/v1/collections", key)
        ok = r.status_code == 200 and {c["name"]: c["dimension"] for c in r.json()["data"]} == {name: 8}
    else:
        action, size = check.split()
        vector = [1.0] * int(size)
        if action == "search":
            r = worker.post(f"/v1/collections/{name}/search", key, {"vector": vector})
        else:
            r = worker.post(f"/v1/collections/{name}/documents", key, {"documents": [{"id": size, "vector": vector}]})
        ok = r.status_code == (200 if size == "8" else 400)
    return None if ok else f"{r.status_code} {r.text[:200]}"


@pytest.mark.parametrize("first", CHECKS)
@pytest.mark.parametrize("deleter, creator", [(0, 1), (0, 0), (1, 0), (1, 1)])
def test_a_collection_made_again_with_another_dimension_is_the_new_one_for_every_worker(
        server, workers, deleter, creator, first):
    """`st` (dimension 4), seen by both workers, is deleted through one worker and made again with dimension 8
    through one (each pairing). Then every worker describes and lists it with dimension 8, and its searches
    and upserts take 8-value vectors and refuse 4-value ones with 400; ``first`` is each worker's first
    request after the change (a later one may find a stale view put right by an earlier one)."""
    key = new_tenant(server.url, "same")
    st = unique("st")
    assert workers[0].post("/v1/collections", key, {"name": st, "dimension": 4}).status_code == 201
    for worker in workers:
        assert worker.get(f"/v1/collections/{st}", key).json()["dimension"] == 4  # both have seen dimension 4

    assert workers[deleter].delete(f"/v1/collections/{st}", key).status_code == 200
    assert workers[creator].post("/v1/collections", key, {"name": st, "dimension": 8}).status_code == 201

    order = [first, *(check for check in CHECKS if check != first)]
    wrong = {f"worker {i}: {check}": answer for check in order for i, worker in enumerate(workers, 1)
             if (answer := as_dimension_8(worker, key, st, check)) is not None}
    assert not wrong, f"a worker still holds the dimension-4 `{st}`: {json.dumps(wrong, indent=1)}"
    workers[0].delete(f"/v1/collections/{st}", key)


# -- 3. a 200 DELETE is a delete for every worker ------------------------------------------------------------------
def test_a_delete_answered_200_is_gone_for_every_worker(server, workers):
    """Rounds of deletes and creates of `lin` through different workers. In each, both workers have seen
    `lin`; worker a deletes it and makes it again; worker b (which saw the previous `lin`) deletes it, 200.
    Then `lin` is gone for both workers (404) and a create through b is a 201, not a 409. (A collection made
    at the start of each round keeps SQLite from handing `lin`'s id straight back; PostgreSQL never does.)"""
    key = new_tenant(server.url, "lin")
    lin = unique("lin")
    path = f"/v1/collections/{lin}"
    assert workers[0].post("/v1/collections", key, {"name": lin, "dimension": 4}).status_code == 201
    for round, (a, b) in enumerate([(0, 1), (1, 0), (0, 1), (1, 0)]):
        for worker in workers:
            assert worker.get(path, key).status_code == 200
        later = {"name": f"{lin}-later-{round}", "dimension": 4}
        assert workers[a].post("/v1/collections", key, later).status_code == 201
        assert workers[a].delete(path, key).status_code == 200
        again = workers[a].post("/v1/collections", key, {"name": lin, "dimension": 4})
        assert again.status_code == 201, f"round {round}: create right after a 200 DELETE: {again.text}"

        deleted = workers[b].delete(path, key)
        assert deleted.status_code == 200, deleted.text
        after = {f"GET through worker {i + 1}": w.get(path, key) for i, w in enumerate(workers)}
        still = answers(after, is_collection_not_found)
        assert not still, (f"round {round}: worker {b + 1} answered DELETE with 200, yet `{lin}` is still there: "
                           f"{json.dumps(still, indent=1)}")
        made = workers[b].post("/v1/collections", key, {"name": lin, "dimension": 4})
        assert made.status_code == 201, f"round {round}: create after a 200 DELETE: {made.status_code} {made.text}"
    for name in [lin, *(f"{lin}-later-{r}" for r in range(4))]:
        workers[0].delete(f"/v1/collections/{name}", key)


# -- 4. the engine's socket answers this server's workers only ------------------------------------------------------
PROBE = r"""
import json, socket, sys
address, frame = sys.argv[1], bytes.fromhex(sys.argv[2])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(5)
outcome = {"received": "", "end": ""}
try:
    sock.connect("\0" + address[1:] if address.startswith("@") else address)
    sock.sendall(frame)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            outcome["end"] = "eof"
            break
        data += chunk
        outcome["received"] = data.hex()
except socket.timeout:
    outcome["end"] = "timeout (the connection stayed open)"
except OSError as exc:
    outcome["end"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(outcome))
"""

HUNG_UP = ("eof", "ConnectionResetError", "BrokenPipeError", "ConnectionRefusedError", "PermissionError")


def hung_up(outcome: dict) -> bool:
    """Nothing came back and the connection was closed (or never accepted): not one reply byte, no timeout."""
    return not outcome["received"] and outcome["end"].startswith(HUNG_UP)


def engine_sockets(engine: int) -> list[str]:
    """The names of the Unix sockets the engine process listens on, as /proc/net/unix shows them to anyone."""
    inodes = set()
    for fd in Path(f"/proc/{engine}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (match := re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))):
                inodes.add(match.group(1))
    names = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()  # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) == 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            names.append(fields[7])
    return names


def as_uid(uid: int) -> list[str] | None:
    """The start of a command line that runs a stdlib-only Python as ``uid`` (the venv's interpreter may live
    under a home directory that uid cannot enter); None if there is none."""
    for python in (os.path.realpath(shutil.which("python3") or ""), "/usr/bin/python3", "/usr/local/bin/python3"):
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python]
        if os.path.isfile(python) and subprocess.run([*argv, "-c", "pass"], capture_output=True,
                                                     timeout=30).returncode == 0:
            return argv
    return None


def probe(address: str, python: list[str]) -> dict:
    """What ``python`` (a command line) reads back after sending a Status call to the socket ``address``."""
    status_call = protocol.frame(protocol.Call(1, protocol.Status()))
    done = subprocess.run([*python, "-I", "-c", PROBE, address, status_call.hex()], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def described(outcome: dict) -> str:
    """What came back, decoded as the engine's Reply where it is one."""
    data = bytes.fromhex(outcome["received"])
    if len(data) > 4:
        with contextlib.suppress(Exception):
            return f"{len(data)} bytes: {protocol.reply_decoder.decode(data[4:])!r}"[:400]
    return f"{len(data)} bytes ({outcome.get('end')})"


def secret_looking(value: str) -> bool:
    """A token's hex (24 digits or more) or base64 (32 characters or more, of both cases and digits)."""
    if re.search(r"[0-9a-fA-F]{24,}", value):
        return True
    return any(re.search("[a-z]", run) and re.search("[A-Z]", run) and re.search("[0-9]", run)
               for run in re.findall(r"[A-Za-z0-9_\-+/]{32,}", value))


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_the_engine_socket_hangs_up_on_other_uids_and_on_callers_without_the_secret(server):
    """The engine's listening socket is visible in /proc/net/unix to every local user. A Status call sent to it
    by uid 65534, or by this (the server's) uid without the per-start secret, gets no reply byte: the
    connection is closed (EOF) before any frame is decoded. Nor is the secret on a child's command line."""
    nobody = as_uid(NOBODY) if os.geteuid() == 0 and shutil.which("setpriv") else None
    if nobody is None:
        pytest.skip(f"needs root, setpriv and a Python that uid {NOBODY} may run")
    (engine,) = role(server.proc.pid, "engine")
    names = engine_sockets(engine)
    assert names, "the engine listens on no Unix socket"

    outcomes = {f"uid {NOBODY} at {name}": probe(name, nobody) for name in names}
    outcomes |= {f"uid {os.geteuid()} without the secret at {name}": probe(name, [sys.executable]) for name in names}
    answered = {who: described(o) for who, o in outcomes.items() if not hung_up(o)}
    assert not answered, f"the engine answered callers that are not its workers: {json.dumps(answered, indent=1)}"

    for pid in children(server.proc.pid):  # a secret on a command line is anyone's to read in /proc/<pid>/cmdline
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        for arg in argv:
            value = arg.partition("=")[2] if arg.startswith("-") else arg
            assert value.startswith(("/", "@")) or not secret_looking(value), (
                f"pid {pid} has a secret-looking argument {arg!r}: {argv}")
