"""Operations: GET /metrics (Prometheus text), request ids, access logs (text and JSON), GET /ready."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from service.engine.protocol import ModelState
from service.observability.logging import JsonFormatter, RequestIdFilter, TextFormatter, request_id, sanitise_request_id
from service.observability.metrics import Metrics, _BatchSizes
from tests.conftest import API_KEY
from tests.server import ServerProcess

pytestmark = pytest.mark.unit

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_prometheus(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """A strict reader of the text format 0.0.4: every line must be a HELP, a TYPE or a sample of a typed family."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, _, body, value = match.groups()
        labels: list[tuple[str, str]] = []
        if body:
            position = 0
            while position < len(body):
                label = LABEL.match(body, position)
                assert label, f"bad labels in {line!r}"
                labels.append((label.group(1), label.group(2)))
                position = label.end()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample of an undeclared family: {line!r}"
        if types[family] == "counter":
            assert name.endswith("_total"), name
        key = (name, frozenset(labels))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value.replace("+Inf", "inf"))
    return types, samples


def value(samples, name: str, **labels) -> float:
    return samples[(name, frozenset((k, str(v)) for k, v in labels.items()))]


def check_histograms(types, samples) -> None:
    """Buckets are cumulative, end in +Inf and +Inf equals _count, for every series of every histogram."""
    for family, kind in types.items():
        if kind != "histogram":
            continue
        series: dict[frozenset, list[tuple[float, float]]] = {}
        for (name, labels), v in samples.items():
            if name == family + "_bucket":
                le = dict(labels)["le"]
                series.setdefault(frozenset(l for l in labels if l[0] != "le"), []).append(
                    (float(le.replace("+Inf", "inf")), v))
        for labels, buckets in series.items():
            buckets.sort()
            assert buckets[-1][0] == math.inf
            counts = [c for _, c in buckets]
            assert counts == sorted(counts), (family, labels)
            assert samples[(family + "_count", labels)] == counts[-1]
            assert (family + "_sum", labels) in samples


@contextmanager
def without_key(client):
    saved = client.headers.pop("Authorization")
    try:
        yield client
    finally:
        client.headers["Authorization"] = saved


async def scrape(client):
    with without_key(client):
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    types, samples = parse_prometheus(response.text)
    check_histograms(types, samples)
    return response.text, types, samples


# -- /metrics --------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_metrics_count_routes_by_template_and_expose_no_tenant_data(client):
    tokens = 0
    for texts in (["the quick brown fox"], ["red apple", "blue sky", "hello"]):
        response = await client.post("/v1/embeddings", json={"model": "tiny", "input": texts})
        assert response.status_code == 200
        tokens += response.json()["usage"]["prompt_tokens"]
    assert (await client.post("/v1/collections", json={"name": "acme-secret-plans", "model": "tiny"})).status_code == 201
    docs = [{"id": f"d{i}", "text": text} for i, text in enumerate(["red apple", "blue sky", "the cat"])]
    response = await client.post("/v1/collections/acme-secret-plans/documents", json={"documents": docs})
    assert response.status_code == 200
    tokens += response.json()["usage"]["prompt_tokens"]
    for _ in range(2):
        response = await client.post("/v1/collections/acme-secret-plans/search",
                                     json={"query": "apple", "top_k": 2, "filter": {"lang": "en"}})
        assert response.status_code == 200
        tokens += response.json()["usage"]["prompt_tokens"]
    assert (await client.post("/v1/collections/nope/search", json={"query": "x"})).status_code == 404
    assert (await client.get("/no/such/route")).status_code == 404
    assert (await client.request("BREW", "/v1/models")).status_code == 405

    text, types, samples = await scrape(client)
    assert "acme" not in text and "secret" not in text and "test-admin" not in text and "d0" not in text
    assert "/nope" not in text and "/no/such" not in text
    search = "/v1/collections/{name}/search"
    assert value(samples, "embedsearch_http_requests_total", method="POST", route=search, status=200) == 2
    assert value(samples, "embedsearch_http_requests_total", method="POST", route=search, status=404) == 1
    assert value(samples, "embedsearch_http_requests_total", method="POST", route="/v1/embeddings", status=200) == 2
    assert value(samples, "embedsearch_http_requests_total", method="POST", route="/v1/collections", status=201) == 1
    assert value(samples, "embedsearch_http_requests_total", method="GET", route="unmatched", status=404) == 1
    assert value(samples, "embedsearch_http_requests_total", method="OTHER", route="unmatched", status=405) == 1
    assert value(samples, "embedsearch_http_request_duration_seconds_count", method="POST", route=search) == 3
    assert value(samples, "embedsearch_http_request_duration_seconds_sum", method="POST", route=search) > 0
    assert value(samples, "embedsearch_http_requests_in_flight") == 1  # the scrape itself

    # encoder: read from the batcher at scrape time
    assert value(samples, "embedsearch_encoder_tokens_total", model="tiny") == tokens
    passes = value(samples, "embedsearch_encoder_forward_passes_total", model="tiny")
    assert passes >= 5
    assert value(samples, "embedsearch_encoder_batch_size_count", model="tiny") == passes
    assert value(samples, "embedsearch_encoder_batch_size_sum", model="tiny") == value(
        samples, "embedsearch_encoder_sequences_total", model="tiny") == 1 + 3 + 3 + 2
    assert value(samples, "embedsearch_encoder_padded_tokens_total", model="tiny") >= tokens
    assert value(samples, "embedsearch_encoder_queue_depth", model="tiny") == 0
    assert value(samples, "embedsearch_encoder_queue_capacity", model="tiny") == 16384
    for model in ("tiny", "tiny-last", "tiny-dense"):
        assert value(samples, "embedsearch_model_ready", model=model) == 1
    assert value(samples, "embedsearch_encoder_forward_passes_total", model="tiny-last") == 0

    # index sizes, by collection id
    row_id = (await client.app.state.services.collections.get("admin", "acme-secret-plans")).id
    assert value(samples, "embedsearch_collections") == 1
    assert value(samples, "embedsearch_collection_vectors", collection=row_id) == 3
    # the filter cache: the first filtered search evaluated the filter in SQL, the second reused it
    lookups = {result: value(samples, "embedsearch_filter_cache_lookups_total", collection=row_id, result=result)
               for result in ("hit", "update", "miss")}
    assert lookups == {"hit": 1, "update": 0, "miss": 1}
    assert types["embedsearch_http_request_duration_seconds"] == "histogram"
    assert types["embedsearch_encoder_batch_size"] == "histogram"

    # a second scrape counts nothing twice, and counts the first scrape
    _, _, again = await scrape(client)
    assert value(again, "embedsearch_encoder_batch_size_count", model="tiny") == passes
    assert value(again, "embedsearch_http_requests_total", method="GET", route="/metrics", status=200) == 1


@pytest.mark.integration
async def test_metrics_need_no_key_but_a_wrong_key_does_not_break_them(client):
    with without_key(client):
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401


def test_batch_size_histogram_takes_each_pass_once_from_the_window():
    class Engine:  # what the engine's status says of one model's batcher, scrape after scrape
        def __init__(self, started: float):
            self.started = started
            self.state = ModelState("ready", 0)

        def run(self, size):
            self.state.forward_passes += 1
            self.state.sequences += size
            self.state.recent_batch_sizes = [*self.state.recent_batch_sizes, size][-4:]

        def update(self, sizes):
            sizes.update(self.started, self.state)

    engine, sizes = Engine(1.0), _BatchSizes()
    for size in (1, 3, 200):
        engine.run(size)
    engine.update(sizes)
    engine.update(sizes)
    assert sizes.histogram.count == 3 and sizes.histogram.sum == 204
    for size in (2, 2, 2, 2, 5, 6):  # more than the window: only the last 4 can be bucketed
        engine.run(size)
    engine.update(sizes)
    assert sizes.histogram.count == 7 and sizes.histogram.sum == 204 + 2 + 2 + 5 + 6
    cumulative = dict(sizes.histogram.cumulative())
    assert cumulative["1"] == 1 and cumulative["2"] == 3 and cumulative["4"] == 4 and cumulative["256"] == 7
    fresh = Engine(2.0)  # a restarted engine (counters from zero) is followed, not misread
    fresh.run(8)
    fresh.update(sizes)
    assert sizes.histogram.count == 8


def test_prometheus_text_escapes_label_values_and_never_mints_methods():
    metrics = Metrics()
    metrics.observe_request("GET", 'a"b\\c\nd', 200, 0.003)
    metrics.observe_request("PROPFIND", "/x", 405, 0.001)
    metrics.observe_request("GET", "/y", 200, 100.0)
    text = metrics.render()
    types, samples = parse_prometheus(text)
    check_histograms(types, samples)
    assert value(samples, "embedsearch_http_requests_total", method="GET", route='a\\"b\\\\c\\nd', status=200) == 1
    assert value(samples, "embedsearch_http_requests_total", method="OTHER", route="/x", status=405) == 1
    assert value(samples, "embedsearch_http_request_duration_seconds_bucket", method="GET", route="/y", le="60") == 0
    assert value(samples, "embedsearch_http_request_duration_seconds_bucket", method="GET", route="/y",
                 le="+Inf") == 1
    assert "PROPFIND" not in text


# -- request ids ------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_request_id_is_generated_or_echoed_on_every_response(client):
    a = await client.get("/v1/models")
    b = await client.get("/v1/models")
    assert re.fullmatch(r"[0-9a-f]{32}", a.headers["x-request-id"])
    assert a.headers["x-request-id"] != b.headers["x-request-id"]
    echoed = await client.get("/v1/models", headers={"X-Request-ID": "trace-42.a:b/c=="})
    assert echoed.headers["x-request-id"] == "trace-42.a:b/c=="
    # errors too: a validation error, an unknown route, a wrong method, a missing key, an unknown model
    responses = [
        await client.post("/v1/embeddings", content=b"{not json", headers={"X-Request-ID": "e1"}),
        await client.get("/nowhere", headers={"X-Request-ID": "e2"}),
        await client.delete("/v1/models", headers={"X-Request-ID": "e3"}),
        await client.get("/v1/models", headers={"X-Request-ID": "e4", "Authorization": "Bearer nope"}),
        await client.get("/v1/models/gpt-4", headers={"X-Request-ID": "e5"}),
        await client.get("/health", headers={"X-Request-ID": "e6"}),
    ]
    assert [r.status_code for r in responses] == [400, 404, 405, 401, 404, 200]
    assert [r.headers.get("x-request-id") for r in responses] == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert all(len(r.headers.get_list("x-request-id")) == 1 for r in responses)


@pytest.mark.integration
async def test_request_id_from_the_client_is_sanitised_and_bounded(client):
    dirty = await client.get("/v1/models", headers={"X-Request-ID": 'abc def"<script>;\t'})
    assert dirty.headers["x-request-id"] == "abcdefscript"
    long = await client.get("/v1/models", headers={"X-Request-ID": "x" * 5000})
    assert long.headers["x-request-id"] == "x" * 128
    junk = await client.get("/v1/models", headers={"X-Request-ID": '"<>;{}'})
    assert re.fullmatch(r"[0-9a-f]{32}", junk.headers["x-request-id"])
    assert sanitise_request_id("") != sanitise_request_id("")
    assert sanitise_request_id("ünïcode-ok") == "ncode-ok"


# -- access log --------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_access_log_line_has_request_id_method_path_status_and_duration(client, caplog):
    with caplog.at_level(logging.INFO, logger="service.access"):
        response = await client.post("/v1/embeddings", json={"model": "tiny", "input": "hello"},
                                     headers={"X-Request-ID": "req-access-1"})
        await client.get("/v1/collections/nope", headers={"X-Request-ID": "req-access-2"})
        await client.get("/health", headers={"X-Request-ID": "req-quiet"})  # probes: DEBUG only
    assert response.status_code == 200
    records = {r.request_id: r for r in caplog.records if r.name == "service.access"}
    assert "req-quiet" not in records
    ok, missing = records["req-access-1"], records["req-access-2"]
    assert (ok.method, ok.path, ok.route, ok.status) == ("POST", "/v1/embeddings", "/v1/embeddings", 200)
    assert isinstance(ok.duration_ms, float) and ok.duration_ms >= 0
    assert (missing.path, missing.route, missing.status) == ("/v1/collections/nope", "/v1/collections/{name}", 404)

    line = JsonFormatter().format(ok)
    assert "\n" not in line
    body = json.loads(line)
    assert {"time", "level", "logger", "message", "request_id", "method", "path", "status", "duration_ms"} <= set(body)
    assert body["request_id"] == "req-access-1" and body["status"] == 200 and body["level"] == "INFO"
    assert body["logger"] == "service.access" and body["time"].endswith("Z")
    assert "[req req-access-2]" in TextFormatter().format(missing)


def test_log_lines_name_their_process_where_there_are_several():
    record = logging.LogRecord("service.engine", logging.INFO, __file__, 1, "engine ready", None, None)
    assert " [worker 2] service.engine: engine ready" in TextFormatter("worker 2").format(record)
    assert "[" not in TextFormatter().format(record)  # one process: no tag
    assert json.loads(JsonFormatter("engine").format(record))["process"] == "engine"
    assert "process" not in json.loads(JsonFormatter().format(record))


def test_log_lines_carry_the_request_id_of_their_context_and_json_stays_one_line():
    logger = logging.getLogger("tests.observability")
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside any request")
        token = request_id.set("ctx-7")
        try:
            try:
                raise ValueError("boom\nsecond line")
            except ValueError:
                logger.exception("failed with %s", "a\nnewline", extra={"collection": 3})
        finally:
            request_id.reset(token)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    outside, failed = map(json.loads, lines)
    assert "request_id" not in outside and outside["level"] == "WARNING"
    assert failed["request_id"] == "ctx-7" and failed["message"] == "failed with a\nnewline"
    assert failed["collection"] == 3 and "ValueError: boom" in failed["exception"]


def test_log_format_setting_is_validated():
    from service.settings import Settings

    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"EMBEDSEARCH_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SystemExit, match="EMBEDSEARCH_LOG_FORMAT="):
        Settings.from_env({"EMBEDSEARCH_LOG_FORMAT": "xml"})


@pytest.mark.system
def test_the_real_server_writes_only_json_lines(tmp_path: Path, models_file: Path):
    """`python -m service serve` with EMBEDSEARCH_LOG_FORMAT=json: uvicorn's lines, ours and the access log."""
    server = ServerProcess(tmp_path / "data", {
        "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file), "EMBEDSEARCH_API_KEY": API_KEY,
        "EMBEDSEARCH_LOG_FORMAT": "json",
    }).start()
    try:
        response = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}",
                                                                   "X-Request-ID": "live-json-1"})
        assert response.status_code == 200 and response.headers["x-request-id"] == "live-json-1"
        assert httpx.get(server.url + "/ready").json()["status"] == "ready"
    finally:
        assert server.stop() == 0
    lines = [line for line in server.output().splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every line, uvicorn's included, is one JSON object
        assert {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    access = [r for r in records if r["logger"] == "service.access"]
    assert [(r["request_id"], r["method"], r["path"], r["status"]) for r in access] == [
        ("live-json-1", "GET", "/v1/models", 200)]
    assert any(r["logger"].startswith("uvicorn") for r in records)


# -- /ready ---------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_ready_when_models_loaded_and_database_answers(client):
    with without_key(client):
        response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": {"tiny": "ready", "tiny-last": "ready",
                                                             "tiny-dense": "ready"}, "database": "ok",
                               "collections": {"failed": []},
                               "processes": {"engine": "ok", "workers": 0, "expected_workers": 0}}


@pytest.mark.integration
async def test_not_ready_while_a_model_loads_or_failed(client):
    served = client.app.state.services.engine.served_models()["tiny-last"]
    for state in ("loading", "error"):
        served.status = state
        try:
            response = await client.get("/ready")
        finally:
            served.status = "ready"
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not_ready" and body["database"] == "ok"
        assert body["models"] == {"tiny": "ready", "tiny-last": state, "tiny-dense": "ready"}
    assert (await client.get("/ready")).status_code == 200


@pytest.mark.integration
async def test_not_ready_when_the_database_does_not_answer_but_still_alive(client, tmp_path: Path):
    service = client.app.state.services.health
    good = service.database
    broken = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    service.database = broken
    try:
        response = await client.get("/ready")
        health = await client.get("/health")
    finally:
        service.database = good
        broken.dispose()
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "models": {"tiny": "ready", "tiny-last": "ready",
                                                                 "tiny-dense": "ready"}, "database": "error",
                               "collections": {"failed": []},
                               "processes": {"engine": "ok", "workers": 0, "expected_workers": 0}}
    assert "no-such-dir" not in response.text
    assert health.status_code == 200 and health.json()["status"] == "ready"  # liveness is not readiness
    assert (await client.get("/ready")).status_code == 200


def test_logging_module_imports_nothing_heavy():
    """The CLI turns progress bars off before torch/tqdm are imported: the logging module must not import them."""
    import subprocess

    code = ("import sys, service.observability.logging; "
            "print(sorted(m for m in ('torch', 'tqdm', 'transformers', 'litestar') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_start_up_chatter_of_faiss_and_alembic_is_debug_only():
    """FAISS's probing of optional builds and alembic's plugin set-up stay out of an INFO log, and come back at
    DEBUG."""
    import logging

    from service.observability.logging import QUIET_LOGGERS, setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        assert not any(logging.getLogger(name).isEnabledFor(logging.INFO) for name in QUIET_LOGGERS)
        assert logging.getLogger("service").isEnabledFor(logging.INFO)
        setup_logging("DEBUG")
        assert all(logging.getLogger(name).isEnabledFor(logging.DEBUG) for name in QUIET_LOGGERS)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
