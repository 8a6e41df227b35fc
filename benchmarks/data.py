"""Workloads: texts of a chosen token length, clustered vectors with queries, and metadata.

Everything is generated from a seed, so two runs (and the service and its baseline in one run) see
exactly the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# Common English words: sentences made of them tokenise to about one token per word in Gemma's
# vocabulary, so lengths are easy to aim at.
WORDS = (
    "the of and to in is was for on that with as by at from it this be are or his an they which one "
    "you had not but what all were when we there can more if out so up said about into than them "
    "time only could new some these two may first then do any like my now over such our man me even "
    "most made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take three small house water "
    "city road train station bread recipe market price river music school family garden kitchen "
    "window morning evening summer winter light dark green blue red quick slow search vector index "
    "query document model server data table paper letter story book page line word number point"
).split()

LENGTHS = {"short": 16, "medium": 128, "long": 512}


def make_texts(count: int, tokens: int, tokenize: Callable[[list[str]], list[list[int]]], seed: int = 0) -> list[str]:
    """``count`` distinct texts of about ``tokens`` tokens each (the tokenizer's count, specials included)."""
    rng = np.random.default_rng(seed + 7919 * tokens)
    words = np.array(WORDS)
    # Tokens per word, measured on a sample (about 1 for these words, plus <bos>).
    sample = " ".join(rng.choice(words, 200))
    per_word = max(0.5, (len(tokenize([sample])[0]) - 1) / 200)
    texts = []
    for _ in range(count):
        n = max(1, round((tokens - 1) / per_word))
        chosen = list(rng.choice(words, n))
        for _ in range(4):  # nudge the word count until the token count is right (or close)
            length = len(tokenize([" ".join(chosen)])[0])
            if length == tokens:
                break
            if length < tokens:
                chosen += list(rng.choice(words, max(1, round((tokens - length) / per_word))))
            else:
                chosen = chosen[: max(1, len(chosen) - max(1, round((length - tokens) / per_word)))]
        texts.append(" ".join(chosen).capitalize() + ".")
    return texts


@dataclass
class VectorSet:
    """Unit vectors with cluster structure (like embeddings), held-out queries and 10 metadata buckets."""

    vectors: np.ndarray  # [n, d] float32, L2-normalised
    queries: np.ndarray  # [q, d] float32, L2-normalised, drawn from the same distribution
    buckets: np.ndarray  # [n] int: metadata {"bucket": b}; each bucket holds 10% of the vectors

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def metadata(self, i: int) -> dict:
        return {"bucket": int(self.buckets[i])}


def clustered_vectors(n: int, dimension: int, n_queries: int, seed: int = 0) -> VectorSet:
    """3000 overlapping Gaussian clusters in a 64-dimensional subspace, lifted into ``dimension``, normalised.

    Uniform random high-dimensional vectors have no neighbourhood structure (every point is about
    equally far from every other), which makes approximate indexes look far worse than on real
    embeddings; clustered low-intrinsic-dimension data behaves like embeddings do. The spread is chosen
    so that neither index has it easy: at 100k vectors, IVF1024 at its default nprobe (32) finds about
    90% of the true top 10 and HNSW32 at efSearch 128 about 98%.
    """
    rng = np.random.default_rng(seed)
    intrinsic = min(64, dimension)
    n_clusters = 3000
    centers = rng.standard_normal((n_clusters, intrinsic), dtype=np.float32)
    lift = rng.standard_normal((intrinsic, dimension), dtype=np.float32) / np.sqrt(intrinsic)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dimension), dtype=np.float32)
        for start in range(0, m, 65536):
            k = min(65536, m - start)
            z = centers[rng.integers(0, n_clusters, k)] + 0.8 * rng.standard_normal((k, intrinsic), dtype=np.float32)
            x = z @ lift + 0.1 * rng.standard_normal((k, dimension), dtype=np.float32)
            out[start : start + k] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    vectors = draw(n)
    queries = draw(n_queries)
    buckets = rng.permutation(np.arange(n) % 10)
    return VectorSet(vectors=vectors, queries=queries, buckets=buckets)
