"""KeywordIndex: the scores of bm25s (Lucene's BM25), exact top-k under an allowed set, updates and
removals seen at once, statistics of its own documents only."""

import bm25s
import numpy as np
import pytest

from index.keywords import B, K1, KeywordIndex, terms

pytestmark = pytest.mark.unit

WORDS = [f"w{i}" for i in range(300)]


def corpus(rng, n: int) -> list[str]:
    # Zipf-like word frequencies, lengths 3 to 40 words
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 40), p=p)) for _ in range(n)]


def bm25s_scores(texts: list[str], query: str) -> np.ndarray:
    retriever = bm25s.BM25(method="lucene", k1=K1, b=B)
    retriever.index([terms(t) for t in texts], show_progress=False)
    return retriever.get_scores(list(dict.fromkeys(terms(query))))


def test_scores_are_bm25s_lucene_scores(rng):
    texts = corpus(rng, 500)
    index = KeywordIndex()
    index.upsert(np.arange(500) * 3, texts)  # seqs need not be dense
    for query in ["w0 w5 w77", "w299", "w3 w3 w12 nothing"]:
        expected = bm25s_scores(texts, query)
        scores, seqs = index.search([query], 20)
        order = np.lexsort((np.arange(500), -expected))[:20]
        np.testing.assert_allclose(scores[0], expected[order], rtol=1e-5)
        assert (seqs[0][expected[order] > 0] == order[expected[order] > 0] * 3).all()


def test_exact_top_k_among_allowed_and_padding(rng):
    texts = corpus(rng, 300)
    index = KeywordIndex()
    index.upsert(range(300), texts)
    allowed = np.arange(0, 300, 7)
    scores, seqs = index.search(["w1 w2"], 10, allowed)
    full, full_seqs = index.search(["w1 w2"], 300)
    inside = [(s, q) for s, q in zip(full[0], full_seqs[0]) if q in set(allowed.tolist()) and q >= 0][:10]
    assert seqs[0].tolist()[:len(inside)] == [q for _, q in inside]
    none_scores, none_seqs = index.search(["unknownword"], 3)
    assert none_seqs.tolist() == [[-1, -1, -1]] and none_scores.tolist() == [[0, 0, 0]]


def test_updates_removals_and_compaction_are_seen_at_once(rng):
    index = KeywordIndex()
    index.upsert([1, 2, 3], ["red apple", "green apple", "blue sky"])
    assert index.search(["apple"], 5)[1][0].tolist()[:2] == [1, 2]
    index.remove([1])
    index.upsert([4], ["a red fox"])  # a replacement takes a new seq
    assert index.search(["red"], 5)[1][0].tolist()[0] == 4 and len(index) == 3
    index.upsert([4], ["no longer red"])  # the same seq again: replaced, not doubled
    assert len(index) == 3 and index.search(["fox"], 5)[1][0].tolist() == [-1] * 5
    index.upsert([5, 6], [None, "   "])  # no text, no terms: not kept
    assert len(index) == 3
    texts = corpus(rng, 3000)
    index.upsert(range(100, 3100), texts)
    index.remove(range(100, 2600))  # past a third removed: postings rebuilt
    kept = texts[2500:]
    expected = bm25s_scores(["green apple", "blue sky", "no longer red"] + kept, "w4 red")
    scores, _ = index.search(["w4 red"], 5)
    np.testing.assert_allclose(scores[0], np.sort(expected)[::-1][:5], rtol=1e-5)


def test_statistics_are_the_index_own():
    a, b = KeywordIndex(), KeywordIndex()
    a.upsert([1, 2], ["rare token", "common words here"])
    b.upsert([1, 2], ["rare token", "common words here"])
    before = a.search(["rare"], 1)[0]
    b.upsert(range(10, 1010), ["rare rare"] * 1000)  # makes `rare` common in b only
    assert a.search(["rare"], 1)[0] == pytest.approx(before)
    assert b.search(["rare"], 1)[0][0][0] < before[0][0]
