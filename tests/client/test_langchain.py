"""embedsearch.langchain against the live server: langchain-tests' standard vector-store suite (sync and
async, LangChain's deterministic fake embeddings in a vector collection), then what the suite leaves out:
a text collection embedded by the server, filters, scores, MMR, the retriever."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from embedsearch import Client
from embedsearch.langchain import EmbedsearchVectorStore
from tests.conftest import API_KEY
from tests.server import ServerProcess

pytestmark = [pytest.mark.system, pytest.mark.filterwarnings("ignore::ResourceWarning")]


class TestStandardSuite(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, live: ServerProcess, name: str) -> Iterator[EmbedsearchVectorStore]:
        store = EmbedsearchVectorStore(name, embedding=self.get_embeddings(), base_url=live.url, api_key=API_KEY)
        yield store
        store.client.delete_collection(name)
        store.client.close()


@pytest.fixture
def texts_store(live: ServerProcess, name: str) -> Iterator[EmbedsearchVectorStore]:
    store = EmbedsearchVectorStore(name, model="tiny", base_url=live.url, api_key=API_KEY)
    yield store
    store.client.delete_collection(name)


# Words the tiny model's tokenizer knows (benchmarks/tiny_model.py): others all read as one unknown token.
DOCS = [Document(id="bread", page_content="a big red apple", metadata={"topic": "food", "year": 2021}),
        Document(id="soup", page_content="green banana and cherry", metadata={"topic": "food", "year": 2019}),
        Document(id="train", page_content="the fast vector search server", metadata={"topic": "travel", "year": 2023})]


def test_a_text_collection_needs_no_embeddings(texts_store: EmbedsearchVectorStore):
    assert texts_store.embeddings is None
    assert texts_store.add_documents(DOCS) == ["bread", "soup", "train"]
    found = texts_store.similarity_search_with_score("green banana and cherry", k=3)
    assert found[0][0] == DOCS[1] and found[0][1] == pytest.approx(1.0, abs=1e-4)
    assert [d.id for d in texts_store.similarity_search("x", k=3, filter={"topic": "food"})] != []
    assert {d.id for d in texts_store.similarity_search("x", k=3, filter={"year": {"$gte": 2020}})} == {"bread", "train"}
    relevance = texts_store.similarity_search_with_relevance_scores("the fast vector search server", k=1)
    assert relevance[0][0].id == "train" and relevance[0][1] == pytest.approx(1.0, abs=1e-4)
    retriever = texts_store.as_retriever(search_kwargs={"k": 2, "filter": {"topic": "travel"}})
    assert [d.id for d in retriever.invoke("anything")] == ["train"]
    assert texts_store.get_by_ids(["train", "nope"]) == [DOCS[2]]
    keyword = texts_store.similarity_search_with_score("cherry", k=3, mode="keyword")
    assert [d.id for d, _ in keyword] == ["soup"]
    hybrid = texts_store.similarity_search("a big red apple", k=2, mode="hybrid", explain=True)
    assert hybrid[0].id == "bread"
    texts_store.delete(filter={"topic": "food"})
    assert [d.id for d in texts_store.similarity_search("x", k=3)] == ["train"]
    texts_store.delete()  # no ids, no filter: everything
    assert texts_store.similarity_search("x", k=3) == []


def test_max_marginal_relevance_prefers_diverse_documents(live: ServerProcess, name: str):
    client = Client(live.url, API_KEY)
    client.create_collection(name, dimension=2)
    store = EmbedsearchVectorStore(name, embedding=DeterministicFakeEmbedding(size=2), client=client)
    # two near-duplicates close to the query and one a little further off in another direction
    store.collection.upsert([{"id": "a", "vector": [1.0, 0.0], "text": "a"},
                             {"id": "a2", "vector": [0.999, 0.01], "text": "a2"},
                             {"id": "b", "vector": [0.7, 0.7], "text": "b"}])
    # keyword and hybrid search with client-side embeddings: the query's words go as the keyword query
    assert [d.id for d in store.similarity_search("a2", k=3, mode="keyword")] == ["a2"]
    assert {d.id for d in store.similarity_search("b", k=2, mode="hybrid")} >= {"b"}
    nearest = store.similarity_search_by_vector([1.0, 0.05], k=2)
    assert {d.id for d in nearest} == {"a", "a2"}
    diverse = store.max_marginal_relevance_search_by_vector([1.0, 0.05], k=2, fetch_k=3, lambda_mult=0.5)
    assert diverse[0].id in ("a", "a2") and diverse[1].id == "b"
    only_relevance = store.max_marginal_relevance_search_by_vector([1.0, 0.05], k=2, fetch_k=3, lambda_mult=1.0)
    assert {d.id for d in only_relevance} == {"a", "a2"}
    client.delete_collection(name)
    client.close()


def test_mmr_on_a_text_collection_uses_the_servers_scores(texts_store: EmbedsearchVectorStore):
    texts_store.add_documents(DOCS + [Document(id="bread2", page_content="a big red apple")])
    picked = texts_store.max_marginal_relevance_search("a big red apple", k=2, fetch_k=4, lambda_mult=0.3)
    assert picked[0].id in ("bread", "bread2") and picked[1].id not in ("bread", "bread2")


async def test_async_methods_on_a_text_collection(texts_store: EmbedsearchVectorStore):
    assert await texts_store.aadd_documents(DOCS) == ["bread", "soup", "train"]
    found = await texts_store.asimilarity_search("a big red apple", k=1)
    assert found == [DOCS[0]]
    scored = await texts_store.asimilarity_search_with_score("x", k=3, filter={"topic": "travel"})
    assert [d.id for d, _ in scored] == ["train"]
    assert [d.id for d in await texts_store.as_retriever(search_kwargs={"k": 1}).ainvoke(DOCS[2].page_content)] == ["train"]
    assert len(await texts_store.amax_marginal_relevance_search("x", k=2, fetch_k=3)) == 2
    assert await texts_store.aget_by_ids(["soup"]) == [DOCS[1]]
    await texts_store.adelete(["soup", "bread"])
    assert [d.id for d in await texts_store.asimilarity_search("x", k=3)] == ["train"]


def test_from_texts_and_construction_errors(live: ServerProcess, name: str):
    store = EmbedsearchVectorStore.from_texts(["one", "two"], metadatas=[{"n": 1}, {"n": 2}], ids=["1", "2"],
                                              collection_name=name, model="tiny", base_url=live.url, api_key=API_KEY)
    assert [d.metadata for d in store.get_by_ids(["2", "1"])] == [{"n": 2}, {"n": 1}]
    with pytest.raises(ValueError, match="texts"):
        store.add_texts(["a", "b"], metadatas=[{}])
    with pytest.raises(ValueError, match="give model="):
        EmbedsearchVectorStore(name + "-missing", base_url=live.url, api_key=API_KEY)
    store.client.create_collection(name + "-v", dimension=3)
    with pytest.raises(ValueError, match="vectors only"):
        EmbedsearchVectorStore(name + "-v", base_url=live.url, api_key=API_KEY)
    store.client.delete_collection(name + "-v")
    store.client.delete_collection(name)
