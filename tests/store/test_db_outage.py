"""Losing PostgreSQL while the server runs: 503s in the OpenAI shape, then recovery without a restart.

The app runs in-process against a PostgreSQL server of this test's own (tests/postgres.py
``own_postgres``), which the test stops (``pg_ctl stop -m fast``: every connection is closed, as
when a database fails over or restarts) and starts again on the same data directory and port.
While it is down, every request that needs the database, the API-key lookup included, is a 503
with ``code: database_unavailable`` and a Retry-After header (service/errors.py maps connection
failures centrally); requests that do not need it (embeddings with the admin key) still work.
Once it is back the same app serves again (``pool_pre_ping`` replaces the dead pooled
connections), and every write acknowledged before the outage is still there.
"""

from __future__ import annotations

import contextlib
import time

import msgspec
import pytest

from tests.conftest import AUTH, wait_ready
from tests.postgres import PostgresUnavailable, own_postgres

pytestmark = pytest.mark.system


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"error": {
        "message": "The database is unavailable right now; retry shortly.",
        "type": "server_error", "param": None, "code": "database_unavailable",
    }}
    assert int(response.headers["retry-after"]) >= 1


async def test_database_outage_is_503_then_recovers_without_losing_acknowledged_writes(settings):
    from litestar.testing import AsyncTestClient

    from service.api.app import create_app
    from service.store.db import make_engine
    from service.store.keys import KeyStore

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(own_postgres())
        except PostgresUnavailable as exc:
            pytest.skip(f"PostgreSQL tests skipped: {exc}")
        app = create_app(msgspec.structs.replace(settings, database_url=pg.url, models="tiny"))
        async with AsyncTestClient(app, base_url="http://testserver.local") as client:
            await wait_ready(client)
            client.headers.update(AUTH)  # the admin key of the settings: checked without the database
            engine = make_engine(pg.url)
            try:
                tenant_key = KeyStore(engine).create("acme")  # checked against the database on first use
            finally:
                engine.dispose()
            assert (await client.post("/v1/collections", json={"name": "c", "dimension": 2})).status_code == 201
            written = await client.post("/v1/collections/c/documents", json={"documents": [
                {"id": "before", "vector": [1, 0], "text": "acknowledged", "metadata": {"k": "v"}}]})
            assert written.status_code == 200, written.text

            pg.stop()
            assert_unavailable(await client.get("/v1/collections/c/documents/before"))
            assert_unavailable(await client.post("/v1/collections/c/documents", json={"documents": [
                {"id": "during", "vector": [0, 1]}]}))
            assert_unavailable(await client.post("/v1/collections/c/search", json={"vector": [1, 0]}))
            assert_unavailable(await client.get("/v1/collections/c/documents"))
            assert_unavailable(await client.get("/v1/collections/c"))
            assert_unavailable(await client.post("/v1/collections/c/documents/delete", json={"ids": ["before"]}))
            assert_unavailable(await client.get("/v1/collections", headers={"Authorization": f"Bearer {tenant_key}"}))
            embedded = await client.post("/v1/embeddings", json={"model": "tiny", "input": "no database needed"})
            assert embedded.status_code == 200, embedded.text

            pg.start()
            document = await client.get("/v1/collections/c/documents/before")  # the first request after it
            assert document.status_code == 200, document.text
            assert document.json() == {"id": "before", "text": "acknowledged", "metadata": {"k": "v"}}
            assert_not_found = await client.get("/v1/collections/c/documents/during")
            assert assert_not_found.status_code == 404  # refused with a 503, so never written
            tenant = await client.get("/v1/collections", headers={"Authorization": f"Bearer {tenant_key}"})
            assert tenant.status_code == 200 and tenant.json()["data"] == []
            after = await client.post("/v1/collections/c/documents", json={"documents": [
                {"id": "after", "vector": [0.6, 0.8]}]})
            assert after.status_code == 200, after.text
            hits = (await client.post("/v1/collections/c/search", json={"vector": [1, 0]})).json()["data"]
            assert [h["id"] for h in hits] == ["before", "after"]
            described = (await client.get("/v1/collections/c")).json()
            assert described["count"] == described["indexed"] == 2
    assert time.monotonic() - started < 30
