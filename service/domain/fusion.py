"""Fusing a dense and a keyword ranking into one (hybrid search), each hit explained.

Reciprocal rank fusion (RRF, Cormack et al. 2009): a document's fused score is the sum over the branches
that found it of ``weight / (k + rank)``, ranks from 1. Weighted fusion: each branch's scores are
min-max normalised over its candidates to [0, 1] (for an l2 distance, the nearest is 1), and the fused
score is ``alpha * dense + (1 - alpha) * keyword``, a branch that missed the document counting 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Fusion:
    method: Literal["rrf", "weighted"] = "rrf"
    candidates: int = 100  # hits each branch contributes
    k: int = 60  # rrf
    dense_weight: float = 1.0  # rrf
    keyword_weight: float = 1.0  # rrf
    alpha: float = 0.5  # weighted: the dense branch's share


@dataclass
class Ranked:
    """A branch's place for one document: its rank there (from 1) and its score there."""

    rank: int
    score: float


@dataclass
class Fused:
    seq: int
    score: float
    dense: Ranked | None = None
    keyword: Ranked | None = None


def branch(scores: np.ndarray, seqs: np.ndarray) -> dict[int, Ranked]:
    """One query's row of an index answer as seq -> (rank, score); -1 (no hit) left out."""
    return {seq: Ranked(rank, score) for rank, (score, seq) in
            enumerate(zip(scores.tolist(), seqs.tolist()), start=1) if seq >= 0}


def fuse(dense: dict[int, Ranked], keyword: dict[int, Ranked], fusion: Fusion, lower_is_better: bool,
         limit: int) -> list[Fused]:
    """The ``limit`` best documents of the two branches, best first (ties: the older document first)."""
    fused = [Fused(seq, 0.0, dense.get(seq), keyword.get(seq)) for seq in dense.keys() | keyword.keys()]
    if fusion.method == "rrf":
        for hit in fused:
            hit.score = sum(weight / (fusion.k + ranked.rank) for weight, ranked in
                            ((fusion.dense_weight, hit.dense), (fusion.keyword_weight, hit.keyword)) if ranked)
    else:
        dense_norm = _normalised(dense, lower_is_better)
        keyword_norm = _normalised(keyword, False)
        for hit in fused:
            hit.score = (fusion.alpha * dense_norm.get(hit.seq, 0.0)
                         + (1 - fusion.alpha) * keyword_norm.get(hit.seq, 0.0))
    fused.sort(key=lambda hit: (-hit.score, hit.seq))
    return fused[:limit]


def _normalised(ranked: dict[int, Ranked], lower_is_better: bool) -> dict[int, float]:
    """Scores min-max scaled to [0, 1], the best 1 (all of them 1 when they are equal)."""
    if not ranked:
        return {}
    scores = [r.score for r in ranked.values()]
    low, high = min(scores), max(scores)
    if high == low:
        return dict.fromkeys(ranked, 1.0)
    if lower_is_better:
        return {seq: (high - r.score) / (high - low) for seq, r in ranked.items()}
    return {seq: (r.score - low) / (high - low) for seq, r in ranked.items()}
