"""One synchronous forward pass: token-id lists in, L2-normalised float32 vectors out.

On a GPU, batches run as CUDA graphs where a captured shape holds them (service/engine/graphs.py),
else eagerly; on the CPU always eagerly.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from service.engine.graphs import CudaGraphs
from service.engine.loader import LoadedModel, default_batch_tokens
from service.engine.pooling import pool
from service.engine.served import Tokenizer

log = logging.getLogger("service.engine")


class Encoder:
    def __init__(self, loaded: LoadedModel, *, cuda_graphs: bool = True, max_batch: int = 256,
                 max_tokens: int = 0) -> None:
        """``cuda_graphs``: on a GPU, capture graphs now (seconds) for batches of up to ``max_batch``
        sequences and ``max_tokens`` padded tokens (the batcher's limits; 0: the device's default). If
        the capture fails, the encoder runs eagerly: slower, not wrong."""
        self.loaded = loaded
        self.spec = loaded.spec
        self.dimension = loaded.dimension
        self.vocab_size = loaded.vocab_size
        self.tokenizer = Tokenizer(loaded.tokenizer.backend_tokenizer)
        self.graphs: CudaGraphs | None = None
        if cuda_graphs and loaded.device.type == "cuda":
            budget = max_tokens or default_batch_tokens(loaded.device)
            graphs = CudaGraphs(loaded, max_batch=max_batch, max_tokens=budget)
            try:
                graphs.capture()
            except Exception:
                log.exception("%s: capturing CUDA graphs failed; its forward passes run eagerly", loaded.spec.name)
            else:
                self.graphs = graphs

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.tokenize(texts)

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        """Embed one batch."""
        return self.submit(batch)()

    def submit(self, batch: list[list[int]]) -> Callable[[], np.ndarray]:
        """Start embedding a batch; calling the result waits for its vectors. A CUDA graph's replay is
        only queued, so the host can prepare the next batch meanwhile; an eager forward runs here."""
        pending = self.graphs.submit(batch) if self.graphs is not None else None
        if pending is not None:
            return pending.result
        vectors = self._eager(batch)
        return lambda: vectors

    @torch.inference_mode()
    def _eager(self, batch: list[list[int]]) -> np.ndarray:
        """Sequences are right-padded, so causal attention never sees padding."""
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
