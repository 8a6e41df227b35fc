"""Pool per-token hidden states into one vector per sequence (right-padded batches)."""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """``hidden`` [batch, seq, dim], ``mask`` [batch, seq] of 0/1 → [batch, dim] in float32."""
    hidden = hidden.float()
    if method == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        # masked_fill, not a product: a padding position's state may be NaN (a fully masked attention row)
        summed = hidden.masked_fill(weights == 0, 0.0).sum(dim=1)
        return summed / weights.sum(dim=1).clamp(min=1.0)
    if method == "last":
        last = mask.sum(dim=1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if method == "cls":
        return hidden[:, 0]
    raise ValueError(f"unknown pooling {method!r}")
