"""Per-key rate limiting: token buckets, 429 in OpenAI's shape with Retry-After, after authentication."""

from __future__ import annotations

import re
from types import SimpleNamespace

import msgspec
import pytest

from service.api.errors import RateLimited, render_service_error
from service.api.ratelimit import RateLimiter
from service.settings import Settings
from service.store.keys import Principal
from tests.conftest import AUTH, wait_ready
from tests.test_embeddings_api import assert_error

pytestmark = pytest.mark.unit

ALICE = Principal(tenant="acme", admin=False, key_id=1)
BOB = Principal(tenant="acme", admin=False, key_id=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate():
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take(ALICE) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(ALICE) == pytest.approx(0.5)  # one token takes 1/2 s at 2 per second
    assert limiter.take(BOB) == 0.0  # buckets are per key
    clock.now += 0.5
    assert limiter.take(ALICE) == 0.0
    assert limiter.take(ALICE) > 0
    clock.now += 3600  # refills up to the burst, never beyond it
    assert [limiter.take(ALICE) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(ALICE) > 0


def test_refused_requests_do_not_spend_tokens():
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.take(ALICE) == 0.0
    for _ in range(10):
        assert limiter.take(ALICE) > 0
    clock.now += 1.0
    assert limiter.take(ALICE) == 0.0


def test_keys_remembered_are_bounded_least_recently_seen_forgotten_first():
    clock = Clock()
    limiter = RateLimiter(1.0, 1, max_keys=3, clock=clock)
    keys = [Principal(tenant="t", admin=False, key_id=i) for i in range(5)]
    for key in keys[:3]:
        limiter.take(key)
    assert limiter.take(keys[0]) > 0  # seen again: now the most recent
    limiter.take(keys[3])  # evicts keys[1], the least recently seen
    limiter.take(keys[4])  # evicts keys[2]
    assert len(limiter) == 3
    assert limiter.take(keys[0]) > 0  # still remembered, still empty
    assert limiter.take(keys[1]) == 0.0  # forgotten: a fresh bucket


async def test_guard_says_retry_after_in_whole_seconds_at_least_one():
    clock = Clock()
    limiter = RateLimiter(1000.0, 1, clock=clock)
    connection = SimpleNamespace(scope={"user": ALICE})
    await limiter.guard(connection, None)
    with pytest.raises(RateLimited) as caught:
        await limiter.guard(connection, None)  # 1 ms to wait: still "1"
    error = caught.value
    assert error.code == "rate_limit_exceeded" and error.retry_after == 1
    response = render_service_error(error)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert response.content["error"]["type"] == "rate_limit_error"
    slow = RateLimiter(0.4, 1, clock=clock)
    await slow.guard(connection, None)
    with pytest.raises(RateLimited) as caught:
        await slow.guard(connection, None)
    assert caught.value.retry_after == 3  # 2.5 s, rounded up
    await limiter.guard(SimpleNamespace(scope={}), None)  # no principal (a route without a key): not limited


def test_settings_off_by_default_and_validated():
    assert Settings.from_env({}).rate_limit_rps == 0
    assert RateLimiter.from_settings(Settings()) is None
    assert RateLimiter.from_settings(Settings(rate_limit_rps=float("inf"))) is None
    limiter = RateLimiter.from_settings(Settings.from_env({"EMBEDSEARCH_RATE_LIMIT_RPS": "2.5"}))
    assert limiter.rate == 2.5 and limiter.burst == 3  # burst 0: one second's worth, rounded up
    limiter = RateLimiter.from_settings(Settings.from_env({"EMBEDSEARCH_RATE_LIMIT_RPS": "0.1",
                                                           "EMBEDSEARCH_RATE_LIMIT_BURST": "20"}))
    assert limiter.rate == 0.1 and limiter.burst == 20
    shared = RateLimiter.from_settings(Settings(rate_limit_rps=10, rate_limit_burst=5), shares=2)
    assert shared.rate == 5 and shared.burst == 3  # each of 2 HTTP workers: half the rate, half the burst rounded up
    assert RateLimiter.from_settings(Settings(rate_limit_rps=1), shares=4).burst == 1  # never below one request
    with pytest.raises(SystemExit, match="EMBEDSEARCH_RATE_LIMIT_RPS="):
        Settings.from_env({"EMBEDSEARCH_RATE_LIMIT_RPS": "-1"})
    with pytest.raises(SystemExit, match="EMBEDSEARCH_RATE_LIMIT_BURST="):
        Settings.from_env({"EMBEDSEARCH_RATE_LIMIT_BURST": "-1"})


@pytest.fixture
async def limited(settings: Settings):
    """An app whose keys may make 2 requests at once, then one per 100 s (so time never refills them here)."""
    from litestar.testing import AsyncTestClient

    from service.api.app import create_app

    app = create_app(msgspec.structs.replace(settings, models="tiny", rate_limit_rps=0.01, rate_limit_burst=2))
    async with AsyncTestClient(app, base_url="http://testserver.local") as client:
        await wait_ready(client)
        yield client


@pytest.mark.integration
async def test_over_the_limit_is_429_with_retry_after_in_openais_shape(limited):
    for _ in range(2):
        assert (await limited.get("/v1/models", headers=AUTH)).status_code == 200
    response = await limited.post("/v1/embeddings", json={"model": "tiny", "input": "hi"},
                                  headers={**AUTH, "X-Request-ID": "limited-1"})
    error = assert_error(response, 429, code="rate_limit_exceeded")
    assert error["type"] == "rate_limit_error" and error["param"] is None
    assert set(response.json()) == {"error"}
    retry_after = response.headers["retry-after"]
    assert re.fullmatch(r"\d+", retry_after) and 1 <= int(retry_after) <= 100
    assert response.headers["x-request-id"] == "limited-1"

    # other keys have their own buckets
    other = limited.app.state.services.keys.create("other-tenant")
    for _ in range(2):
        assert (await limited.get("/v1/models", headers={"Authorization": f"Bearer {other}"})).status_code == 200
    assert (await limited.get("/v1/models", headers={"Authorization": f"Bearer {other}"})).status_code == 429

    # authentication comes first: no key or a wrong key is 401, never 429, and spends nothing
    assert_error(await limited.get("/v1/models"), 401, code="invalid_api_key")
    assert_error(await limited.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)

    # routes without a key are never limited
    for _ in range(5):
        assert (await limited.get("/health", headers=AUTH)).status_code == 200
        assert (await limited.get("/ready", headers=AUTH)).status_code == 200
        assert (await limited.get("/metrics", headers=AUTH)).status_code == 200

    # the refusals show up in the metrics, by route template
    text = (await limited.get("/metrics")).text
    assert 'embedsearch_http_requests_total{method="POST",route="/v1/embeddings",status="429"} 1' in text
    assert 'embedsearch_http_requests_total{method="GET",route="/v1/models",status="429"} 1' in text


@pytest.mark.integration
async def test_no_limit_by_default(client):
    for _ in range(30):
        assert (await client.get("/v1/models")).status_code == 200
