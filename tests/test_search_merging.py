"""Concurrent searches of one collection are merged into one index call and one SQL fetch, and each
answer is exactly the one it would get alone (the domain's Search, driven in this test's event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest

from service.domain.search import Query
from service.errors import InvalidRequest

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def services(settings):
    from service.api.app import build
    from service.engine.registry import Registry
    from service.store import migrate
    from service.store.db import make_engine

    settings.data_dir.mkdir(parents=True)
    database = make_engine(settings.sqlalchemy_url)
    migrate.upgrade(database)
    built = build(settings, Registry.load(settings.models_file), database)
    try:
        yield built
    finally:
        database.dispose()


def slowed(monkeypatch, engine) -> list[int]:
    """Record the queries of each index call; the first is slow, so that the searches after it queue."""
    calls: list[int] = []
    real = engine.search

    def search(collection_id, queries, k, *args):
        calls.append(len(queries))
        if len(calls) == 1:
            time.sleep(0.3)
        return real(collection_id, queries, k, *args)

    monkeypatch.setattr(engine, "search", search)
    return calls


def hits(found) -> list[tuple[str, float]]:
    return [(hit.document.id, hit.score) for hit in found.hits[0]]


@pytest.mark.parametrize("index", ["Flat", "HNSW32", "IVF16,Flat"])
async def test_merged_searches_answer_like_single_ones(settings, monkeypatch, index):
    async with services(settings) as s:
        await s.collections.create("t", "m", model=None, dimension=16, metric="cosine", index=index)
        rng = np.random.default_rng(3)
        docs = [_Doc(str(i), v, {"g": i % 3}) for i, v in enumerate(rng.standard_normal((600, 16)))]
        await s.documents.upsert("t", "m", docs)
        queries = [Query(field="vector", vectors=[rng.standard_normal(16).tolist()], top_k=k,
                         filter={"g": g} if g is not None else None)
                   for k in (5, 10) for g in (None, 1) for _ in range(6)]
        alone = [hits(await s.search.search("t", "m", q)) for q in queries]
        calls = slowed(monkeypatch, s.engine)
        merged = [hits(found) for found in await asyncio.gather(*(s.search.search("t", "m", q) for q in queries))]
        assert max(calls) > 1 and len(calls) < len(queries), calls  # searches shared index calls
        for one, together in zip(alone, merged):
            assert [i for i, _ in one] == [i for i, _ in together]
            np.testing.assert_allclose([x for _, x in one], [x for _, x in together], rtol=1e-6)


async def test_a_merged_search_that_fails_fails_alone(settings, monkeypatch):
    """An answer too large for one search in a merged run is that search's 400; the others get theirs."""
    import service.domain.validation

    async with services(settings) as s:
        await s.collections.create("t", "f", model=None, dimension=2, metric="cosine", index="Flat")
        await s.documents.upsert("t", "f", [_Doc(str(i), [1, i], {}, "x" * 100) for i in range(30)])
        monkeypatch.setattr(service.domain.validation, "MAX_RESPONSE_BYTES", 1500)
        slowed(monkeypatch, s.engine)
        small, big = (Query(field="vector", vectors=[[1, 0]], top_k=k) for k in (5, 20))
        answers = await asyncio.gather(*(s.search.search("t", "f", q) for q in (small, big, small, big, small)),
                                       return_exceptions=True)
        assert [type(a).__name__ for a in answers] == ["Found", "InvalidRequest", "Found", "InvalidRequest", "Found"]
        assert isinstance(answers[1], InvalidRequest) and answers[1].code == "response_too_large"


class _Doc:
    def __init__(self, id, vector, metadata, text=None):
        self.id, self.vector, self.metadata, self.text = id, list(map(float, vector)), metadata, text
