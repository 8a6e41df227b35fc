"""One synchronous forward pass: token-id lists in, L2-normalised float32 vectors out."""

from __future__ import annotations

import numpy as np
import torch

from service.engine.loader import LoadedModel
from service.engine.pooling import pool


class Encoder:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.dimension = loaded.dimension
        self.vocab_size = loaded.vocab_size
        self._backend = loaded.tokenizer.backend_tokenizer  # the Rust `tokenizers` object

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the special tokens (BOS), as ``tokenizer(texts)["input_ids"]`` gives them, from the
        fast tokenizer's backend directly: a third of the time for a short text."""
        return [encoding.ids for encoding in self._backend.encode_batch(texts, add_special_tokens=True)]

    @torch.inference_mode()
    def encode(self, batch: list[list[int]]) -> np.ndarray:
        """Embed one batch; sequences are right-padded, so causal attention never sees padding."""
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self.loaded.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        device = self.loaded.device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.loaded.model(input_ids=ids, attention_mask=mask).last_hidden_state
        vectors = pool(hidden, mask, self.spec.pooling)
        for layer in self.loaded.dense:
            vectors = layer(vectors)
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.cpu().numpy().astype(np.float32, copy=False)
