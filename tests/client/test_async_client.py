"""embedsearch.AsyncClient against the live server: the same routes as the sync client, awaited."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

import embedsearch
from embedsearch import AsyncClient
from tests.client.test_client import OPENAI_ERROR_KEYS, unit
from tests.conftest import API_KEY
from tests.server import ServerProcess

pytestmark = [pytest.mark.system, pytest.mark.filterwarnings("ignore::ResourceWarning")]


async def test_every_route_awaited(aclient: AsyncClient, name: str):
    assert [m.id for m in await aclient.list_models()] == ["tiny"] and (await aclient.get_model("tiny")).id == "tiny"
    assert (await aclient.embed(["a", "b", "c"], model="tiny")).shape == (3, 64)
    kb = await aclient.create_collection(name, model="tiny")
    assert name in [c.name for c in await aclient.list_collections()]
    assert (await aclient.get_collection(name)).name == name
    # 300 texts from words the tiny tokenizer knows (benchmarks/tiny_model.py), past 2000 tokens a request
    words = "the quick brown fox jumps over lazy dog cat sat mat red green blue apple banana cherry".split()
    texts = [" ".join(words[(i * k) % len(words)] for k in range(1, 9)) for i in range(300)]
    ids = await kb.upsert([{"id": f"{i:03d}", "text": t, "metadata": {"subject": i % 5}} for i, t in enumerate(texts)])
    assert len(ids) == 300 and (await kb.count()) == 300 and (await kb.info()).indexed == 300
    doc = await kb.get("007", include_vector=True)
    assert doc.text == texts[7] and doc.vector.shape == (64,)
    np.testing.assert_allclose(doc.vector, (await aclient.embed(texts[7], model="tiny"))[0], atol=1e-5)
    assert [d.id for d in await kb.get_many(["002", "nope", "001"])] == ["002", "001"]
    page = await kb.page(limit=5, filter={"subject": 1})
    assert [d.id for d in page.documents] == ["001", "006", "011", "016", "021"] and page.has_more
    assert [d.id async for d in kb.documents(page_size=64)] == sorted(ids)
    hits = await kb.search(texts[42], top_k=3, filter={"subject": 2})
    assert hits[0].score == pytest.approx(1.0, abs=1e-4) and all(h.metadata["subject"] == 2 for h in hits)
    assert texts[42] in [h.text for h in hits if h.score > 0.9999]
    by_vector = await kb.search(vector=doc.vector, top_k=1, include=["vector"])
    np.testing.assert_allclose(by_vector[0].vector, doc.vector, atol=1e-6)
    batch = await kb.search_batch(texts[:3], top_k=1)
    assert [b[0].id for b in batch] == [(await kb.search(t, top_k=1))[0].id for t in texts[:3]]
    assert len(await kb.search_batch(vectors=unit(260, 64), top_k=1)) == 260
    assert await kb.delete(["000", "nope"]) == 1 and await kb.delete(filter={"subject": 4}) == 60
    await kb.delete_one("001")
    with pytest.raises(embedsearch.NotFoundError) as gone:
        await kb.delete_one("001")
    assert set(gone.value.error) == OPENAI_ERROR_KEYS
    assert (await kb.count()) == 300 - 1 - 60 - 1
    with pytest.raises(embedsearch.BadRequestError):
        await kb.search(vector=[1.0, 2.0])
    made = await aclient.create_key("async-tenant")
    assert made.id in [k.id for k in await aclient.list_keys()]
    await aclient.revoke_key(made.id)
    assert (await aclient.health())["status"] == "ready" and (await aclient.ready())["status"] == "ready"
    assert "embedsearch_" in await aclient.metrics()
    await aclient.delete_collection(name)
    with pytest.raises(embedsearch.NotFoundError):
        await kb.info()


async def test_concurrent_calls_share_one_client(aclient: AsyncClient, name: str):
    kb = await aclient.create_collection(name, dimension=16)
    vectors = unit(64, 16, seed=3)
    await asyncio.gather(*(kb.upsert([{"id": str(i), "vector": vectors[i]}]) for i in range(64)))
    found = await asyncio.gather(*(kb.search(vector=vectors[i], top_k=1) for i in range(64)))
    assert [f[0].id for f in found] == [str(i) for i in range(64)]


async def test_async_retries_429_and_raises_typed_errors(throttled: ServerProcess):
    statuses: list[int] = []

    async def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    http = httpx.AsyncClient(event_hooks={"response": [record]})
    async with AsyncClient(throttled.url, API_KEY, http_client=http) as client:
        for _ in range(6):
            assert (await client.get_model("tiny")).id == "tiny"
    assert statuses.count(200) == 6 and 429 in statuses
    async with AsyncClient(throttled.url, API_KEY, max_retries=0) as impatient:
        with pytest.raises(embedsearch.RateLimitError):
            for _ in range(5):
                await impatient.get_model("tiny")
    async with AsyncClient(throttled.url, "wrong-key") as stranger:
        with pytest.raises(embedsearch.AuthenticationError):
            await stranger.list_collections()
    await http.aclose()
