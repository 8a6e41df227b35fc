"""embedsearch.llama_index.EmbedsearchVectorStore against the live server: a VectorStoreIndex over it (the
server's own embeddings through LlamaIndex's OpenAILikeEmbedding), metadata filters, deletes, async."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from llama_index.embeddings.openai_like import OpenAILikeEmbedding

from embedsearch import Client
from embedsearch.llama_index import EmbedsearchVectorStore, to_filter
from tests.client.test_client import unit
from tests.conftest import API_KEY
from tests.server import ServerProcess

pytestmark = [pytest.mark.system, pytest.mark.filterwarnings("ignore::ResourceWarning")]

METADATA = [  # every JSON type, nested objects and lists included
    {"topic": "food", "year": 2019, "rating": 4.5, "vegan": True, "tags": ["bread", "oven"], "note": None,
     "author": {"name": "Ann", "born": 1970}},
    {"topic": "travel", "year": 2021, "rating": 3.0, "vegan": False, "tags": [], "note": "long",
     "author": {"name": "Bob", "born": 1985}},
    {"topic": "food", "year": 2023, "rating": 2.5, "vegan": False, "tags": ["soup"], "note": "",
     "author": {"name": "Cy", "born": 1990}},
]
# words the tiny model's word-level tokenizer knows (benchmarks/tiny_model.py): others are all one <unk>
TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world from a fast server",
         "a big red apple and a small green cherry"]
WORDS = ["cat", "dog", "fox", "apple", "banana", "cherry", "red", "green", "blue"]


def embed_model(live: ServerProcess) -> OpenAILikeEmbedding:
    return OpenAILikeEmbedding(model_name="tiny", api_base=live.url + "/v1", api_key=API_KEY)


def store_of(live: ServerProcess, name: str, **fields) -> EmbedsearchVectorStore:
    return EmbedsearchVectorStore(name, base_url=live.url + "/v1", api_key=API_KEY, **fields)


def documents() -> list[Document]:
    # metadata left out of what is embedded, so that a node's own text is an exact query (score 1)
    return [Document(id_=f"doc{i}", text=text, metadata=meta, excluded_embed_metadata_keys=list(meta))
            for i, (text, meta) in enumerate(zip(TEXTS, METADATA))]


def node_text(i: int) -> str:
    return f"the {WORDS[i]} sat on the mat"


def nodes(vectors: bool = True) -> list[TextNode]:
    """Nine nodes of three source documents a, b, c: n0..n8, node i of document "abc"[i // 3]."""
    vecs = unit(9, 64, seed=3)
    return [TextNode(id_=f"n{i}", text=node_text(i), embedding=vecs[i].tolist() if vectors else None,
                     metadata={"source": "abc"[i // 3], "i": i, "even": i % 2 == 0, "kind": "odd" if i % 2 else "even",
                               "meta": {"depth": i % 3}},
                     relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="abc"[i // 3])})
            for i in range(9)]


def test_an_index_over_a_vector_collection_retrieves_and_round_trips(live: ServerProcess, client: Client, name: str):
    store = store_of(live, name, dimension=64)
    info = client.collection(name).info()
    assert (info.model, info.dimension, info.metric) == (None, 64, "cosine")
    assert store.client.base_url == live.url + "/v1" and store.base_url == live.url + "/v1"
    assert "api_key" not in store.to_dict() and API_KEY not in repr(store)
    context = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex.from_documents(documents(), storage_context=context, embed_model=embed_model(live))
    assert client.collection(name).count() == 3
    retriever = index.as_retriever(similarity_top_k=3)
    for i, text in enumerate(TEXTS):
        found = retriever.retrieve(text)
        assert len(found) == 3 and found[0].score == pytest.approx(1.0, abs=1e-4)
        assert found[0].node.get_content() == text and found[0].node.metadata == METADATA[i]
        assert found[0].node.ref_doc_id == f"doc{i}"
        assert all(found[0].score >= other.score for other in found[1:])
    # stored as documented: the node's text, its metadata at the top level, LlamaIndex's keys beside it
    node_id = retriever.retrieve(TEXTS[1])[0].node.node_id
    stored = client.collection(name).get(node_id, include_vector=True)
    assert stored.text == TEXTS[1] and stored.vector.shape == (64,)
    assert {k: stored.metadata[k] for k in METADATA[1]} == METADATA[1]
    assert {"_node_content", "_node_type", "doc_id", "ref_doc_id", "document_id"} <= set(stored.metadata)
    assert stored.metadata["ref_doc_id"] == "doc1"
    # a retriever's filters go to the server
    only_food = MetadataFilters(filters=[MetadataFilter(key="topic", value="food")])
    food = index.as_retriever(similarity_top_k=3, filters=only_food).retrieve("x")
    assert {hit.node.ref_doc_id for hit in food} == {"doc0", "doc2"}
    one_doc = index.as_retriever(similarity_top_k=3, doc_ids=["doc1"]).retrieve("x")
    assert [hit.node.ref_doc_id for hit in one_doc] == ["doc1"]
    # deleting a document through the index deletes its nodes on the server
    index.delete_ref_doc("doc0")
    assert client.collection(name).count() == 2
    assert "doc0" not in {hit.node.ref_doc_id for hit in retriever.retrieve(TEXTS[0])}


def test_a_text_collection_embeds_texts_and_queries_on_the_server(live: ServerProcess, client: Client, name: str):
    store = store_of(live, name, model="tiny", is_embedding_query=False)
    assert client.collection(name).info().model == "tiny"
    assert store.add(nodes(vectors=False)) == [f"n{i}" for i in range(9)]
    # the server embeds both: LlamaIndex's embed model is never called
    index = VectorStoreIndex.from_vector_store(store, embed_model=MockEmbedding(embed_dim=64))
    found = index.as_retriever(similarity_top_k=2).retrieve(node_text(4))
    assert found[0].node.node_id == "n4" and found[0].score == pytest.approx(1.0, abs=1e-4)
    assert found[0].node.metadata["meta"] == {"depth": 1} and found[0].node.ref_doc_id == "b"
    # LlamaIndex embedding through the same model on the client agrees with the server
    again = store_of(live, name, model="tiny")
    assert again.is_embedding_query
    client_side = VectorStoreIndex.from_vector_store(again, embed_model=embed_model(live))
    hit = client_side.as_retriever(similarity_top_k=1).retrieve(node_text(7))[0]
    assert hit.node.node_id == "n7" and hit.score == pytest.approx(1.0, abs=1e-4)
    # an index built over it embeds on the client; the vectors match the server's
    VectorStoreIndex.from_documents(documents(), storage_context=StorageContext.from_defaults(vector_store=again),
                                    embed_model=embed_model(live))
    assert index.as_retriever(similarity_top_k=1).retrieve(TEXTS[2])[0].node.ref_doc_id == "doc2"


def ids(store: EmbedsearchVectorStore, filters: MetadataFilters | None = None, **query) -> set[str]:
    result = store.query(VectorStoreQuery(query_embedding=unit(1, 64, seed=9)[0].tolist(), similarity_top_k=20,
                                          filters=filters, **query))
    assert result.ids == [n.node_id for n in result.nodes] and len(result.similarities) == len(result.ids)
    return set(result.ids)


def f(key: str, value, op: str = "==") -> MetadataFilter:
    return MetadataFilter(key=key, value=value, operator=FilterOperator(op))


def n(*i: int) -> set[str]:
    return {f"n{j}" for j in i}


def test_metadata_filters_select_exactly_the_matching_nodes(live: ServerProcess, name: str):
    store = store_of(live, name, dimension=64)
    store.add(nodes())
    every = n(*range(9))
    assert ids(store) == every
    cases = [
        ([f("source", "b")], n(3, 4, 5)),
        ([f("source", "b", "!=")], every - n(3, 4, 5)),
        ([f("i", 2, ">"), f("i", 6, "<")], n(3, 4, 5)),
        ([f("i", 2, ">="), f("i", 6, "<=")], n(2, 3, 4, 5, 6)),
        ([f("i", 2.5, ">")], n(3, 4, 5, 6, 7, 8)),
        ([f("kind", "f", "<")], n(*range(0, 9, 2))),  # strings compare too
        ([f("source", ["a", "c"], "in")], every - n(3, 4, 5)),
        ([f("i", [1, 2, 3], "nin")], every - n(1, 2, 3)),
        ([f("i", [], "in")], set()),
        ([f("i", [], "nin")], every),
        ([f("meta.depth", 0)], n(0, 3, 6)),  # a dotted key reads nested metadata
        ([f("missing", None, "is_empty")], every),
        ([f("kind", None, "is_empty")], set()),
    ]
    for filters, expected in cases:
        assert ids(store, MetadataFilters(filters=filters)) == expected, filters
    either = MetadataFilters(filters=[f("source", "a"), f("i", 8)], condition=FilterCondition.OR)
    assert ids(store, either) == n(0, 1, 2, 8)
    nested = MetadataFilters(filters=[f("kind", "even"), either])  # AND of an OR
    assert ids(store, nested) == n(0, 2, 8)
    neither = MetadataFilters(filters=[f("source", "a"), f("i", 8)], condition=FilterCondition.NOT)
    assert ids(store, neither) == n(3, 4, 5, 6, 7)
    assert ids(store, MetadataFilters(filters=[])) == every
    # doc_ids: the nodes of these source documents; node_ids: those nodes; both with the filters
    assert ids(store, doc_ids=["a", "c"]) == every - n(3, 4, 5)
    assert ids(store, MetadataFilters(filters=[f("kind", "odd")]), doc_ids=["a", "c"]) == n(1, 7)
    assert ids(store, node_ids=["n1", "n5", "nope"]) == n(1, 5)
    assert ids(store, MetadataFilters(filters=[f("i", 3, ">")]), node_ids=["n1", "n5"]) == n(5)
    top = store.query(VectorStoreQuery(query_embedding=unit(9, 64, seed=3)[4].tolist(), similarity_top_k=1,
                                       node_ids=["n4", "n5", "n6"]))
    assert top.ids == ["n4"] and top.similarities[0] == pytest.approx(1.0, abs=1e-4)
    assert to_filter(nested) == {"$and": [{"kind": {"$eq": "even"}},
                                          {"$or": [{"source": {"$eq": "a"}}, {"i": {"$eq": 8}}]}]}
    assert to_filter(neither) == {"$not": {"$or": [{"source": {"$eq": "a"}}, {"i": {"$eq": 8}}]}}
    for op in ("text_match", "contains", "any", "all"):
        with pytest.raises(ValueError, match=FilterOperator(op).name):
            ids(store, MetadataFilters(filters=[f("tags", ["x"] if op in ("any", "all") else "x", op)]))
    with pytest.raises(ValueError, match="mmr"):
        ids(store, mode=VectorStoreQueryMode.MMR)
    with pytest.raises(ValueError, match="query_embedding or a query_str"):
        store.query(VectorStoreQuery(similarity_top_k=1))


def test_delete_by_document_by_node_get_and_clear(live: ServerProcess, client: Client, name: str):
    store = store_of(live, name, dimension=64)
    store.add(nodes())
    collection = client.collection(name)
    store.delete("b")  # every node of document b, and only them
    assert sorted(d.id for d in collection.documents()) == ["n0", "n1", "n2", "n6", "n7", "n8"]
    store.delete("nope")
    assert collection.count() == 6
    got = store.get_nodes(node_ids=["n7", "n3", "n0"])  # in their order; a deleted one left out
    assert [g.node_id for g in got] == ["n7", "n0"]
    assert got[0].get_content() == node_text(7) and got[0].metadata["i"] == 7 and got[0].ref_doc_id == "c"
    odd = MetadataFilters(filters=[f("kind", "odd")])
    assert [g.node_id for g in store.get_nodes(filters=odd)] == ["n1", "n7"]
    assert [g.node_id for g in store.get_nodes(node_ids=["n1", "n2"], filters=odd)] == ["n1"]
    assert len(store.get_nodes()) == 6
    store.delete_nodes(node_ids=["n0", "n1"], filters=odd)  # both: only ids that match
    assert collection.count() == 5 and not store.get_nodes(node_ids=["n1"])
    store.delete_nodes(node_ids=["n0"])
    store.delete_nodes(filters=MetadataFilters(filters=[f("i", 7, ">=")]))
    assert sorted(d.id for d in collection.documents()) == ["n2", "n6"]
    store.delete_nodes()  # neither: deletes nothing
    assert collection.count() == 2
    store.clear()
    assert collection.count() == 0 and store.get_nodes() == []
    store.add(nodes()[:2])  # a document written without LlamaIndex reads back as a TextNode
    collection.upsert([{"id": "plain", "text": "plain text", "metadata": {"x": 1}, "vector": unit(1, 64)[0]}])
    plain = store.get_nodes(node_ids=["plain"])[0]
    assert (plain.node_id, plain.get_content(), plain.metadata) == ("plain", "plain text", {"x": 1})


async def test_the_async_methods(live: ServerProcess, client: Client, name: str):
    store = store_of(live, name, dimension=64)
    assert await store.async_add(nodes()) == [f"n{i}" for i in range(9)]
    assert client.collection(name).count() == 9
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model(live))
    await index.ainsert_nodes([TextNode(id_="extra", text="a slow brown banana", metadata={"source": "x"},
                                        excluded_embed_metadata_keys=["source"],
                                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="x")})])
    found = await index.as_retriever(similarity_top_k=2).aretrieve("a slow brown banana")
    assert found[0].node.node_id == "extra" and found[0].score == pytest.approx(1.0, abs=1e-4)
    query = VectorStoreQuery(query_embedding=unit(9, 64, seed=3)[2].tolist(), similarity_top_k=3,
                             filters=MetadataFilters(filters=[f("source", "a")]))
    result = await store.aquery(query)
    assert result.ids[0] == "n2" and set(result.ids) == {"n0", "n1", "n2"}
    assert np.isclose(result.similarities[0], 1.0, atol=1e-4)
    await store.adelete("a")
    assert [n.node_id for n in await store.aget_nodes(filters=MetadataFilters(filters=[f("i", 4, "<")]))] == ["n3"]
    await store.adelete_nodes(node_ids=["n3", "n4"])
    assert [n.node_id for n in await store.aget_nodes(node_ids=["n4", "n5", "extra"])] == ["n5", "extra"]
    await store.aclear()
    assert client.collection(name).count() == 0


def test_text_search_and_hybrid_query_modes(live: ServerProcess, name: str):
    """TEXT_SEARCH is the server's BM25 over query_str; HYBRID fuses it with the dense branch (weights of
    alpha when given, else RRF)."""
    store = store_of(live, name, dimension=64)
    store.add(nodes())  # node i's text names WORDS[i]
    vectors = unit(9, 64, seed=3)
    text = store.query(VectorStoreQuery(query_str="banana", similarity_top_k=3, mode=VectorStoreQueryMode.TEXT_SEARCH))
    assert text.ids == ["n4"] and text.nodes[0].get_content() == node_text(4)
    # the vector points at n2, the words at n4: hybrid finds both, alpha moves the order
    for alpha, first in ((0.9, "n2"), (0.1, "n4")):
        hybrid = store.query(VectorStoreQuery(query_embedding=vectors[2].tolist(), query_str="banana", alpha=alpha,
                                              similarity_top_k=2, mode=VectorStoreQueryMode.HYBRID))
        assert hybrid.ids[0] == first, (alpha, hybrid.ids)
    rrf = store.query(VectorStoreQuery(query_embedding=vectors[2].tolist(), query_str="banana", similarity_top_k=2,
                                       mode=VectorStoreQueryMode.HYBRID))
    assert set(rrf.ids) == {"n2", "n4"}
    with pytest.raises(ValueError, match="query_str"):
        store.query(VectorStoreQuery(query_embedding=vectors[2].tolist(), mode=VectorStoreQueryMode.HYBRID))
