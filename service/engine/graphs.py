"""CUDA graphs of the encoder's forward pass, one per bucketed (batch, length) shape.

On a GPU a small batch is launch-bound: Python spends about 20 ms launching the kernels of one forward
(gemma3:270m, bf16, H200), whatever the batch up to 64. A CUDA graph replays them all in one launch.
A graph has fixed shapes and addresses, so a batch is padded up to the smallest captured shape that
holds it (:func:`buckets`, :func:`pick`): extra rows are one pad token each and are dropped, extra
columns are right padding as in the eager path. A batch that no shape holds runs eagerly.

Nothing in a graph may read a GPU value on the host. Transformers' own mask code does (it checks
whether the padding mask can be skipped; 5.24 skips that check while it sees a capture, a detail we
do not lean on), so :func:`attention_masks` builds the 4-D boolean masks of each layer type from the
rows' lengths, with plain tensor arithmetic that the graph captures (no host copy of B x L x L), and the
model gets them as the ``{"full_attention": ..., "sliding_attention": ...}`` mapping that
``Gemma3TextModel.forward`` takes as already prepared. The masks equal transformers' (causal or
bidirectional, sliding window, padding); pooling, the dense layers and L2 normalisation run inside the
graph too, so the one output is a [batch, dimension] float32 buffer. :class:`BucketedForward` is
that body: it runs eagerly as well, which is how the tests check it against the eager encoder on
the CPU.

:class:`CudaGraphs` captures every shape at start-up, largest first, all in one memory pool (a
smaller graph reuses the larger ones' freed blocks; replays never overlap, they share one stream).
That pool keeps about the largest bucket's activations for good, besides what an eager forward of a
batch past the buckets takes when one comes.
Its :meth:`CudaGraphs.submit` returns before the GPU is done: the ids and lengths are written into
pinned host memory and copied without blocking, the replay and the copy of the vectors back (into
pinned memory again) are queued on the graphs' stream, and only :meth:`Pending.result` waits. A
caller that submits batch n+1 before reading batch n thus pads n+1 on the host while n replays; the
copies themselves sit in the stream between two replays (about a MiB at most, microseconds).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from service.engine.loader import LoadedModel
from service.engine.pooling import pool

log = logging.getLogger("service.engine")

Shape = tuple[int, int]  # (rows, tokens per row)
SHORTEST = 16  # the shortest bucket length: below it a forward costs the same


def _ladder(first: int, top: int, midpoints: bool) -> list[int]:
    """``first``, twice that and so on below ``top`` (with the 1.5x steps between if ``midpoints``), then ``top``."""
    steps, size = [], first
    while size < top:
        steps.append(size)
        if midpoints and size * 3 // 2 < top:
            steps.append(size * 3 // 2)
        size *= 2
    return [*steps, top]


def buckets(max_batch: int, max_length: int, max_tokens: int) -> list[Shape]:
    """The shapes to capture, largest first: batch sizes 1, 2, 4... up to ``max_batch``; lengths 16, 24,
    32, 48... up to ``max_length`` (padding past a length costs compute, so its steps are finer); no
    shape over ``max_tokens`` padded tokens (the batcher's budget, so memory stays within what the
    eager path would use)."""
    shapes = [(rows, length) for rows in _ladder(1, max_batch, False) for length in _ladder(SHORTEST, max_length, True)
              if rows * length <= max_tokens]
    return sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape), reverse=True)


def pick(shapes: list[Shape], rows: int, width: int) -> Shape | None:
    """The smallest shape holding ``rows`` sequences of up to ``width`` tokens; None past them all."""
    fits = [shape for shape in shapes if shape[0] >= rows and shape[1] >= width]
    return min(fits, key=lambda shape: (shape[0] * shape[1], shape), default=None)


def attention_masks(real: torch.Tensor, layer_types: set[str], sliding_window: int,
                    bidirectional: bool) -> dict[str, torch.Tensor]:
    """Gemma 3's 4-D boolean masks [batch, 1, query, key] (True: attend), as transformers builds them
    from the 2-D padding mask ``real`` [batch, length] for sdpa: causal, or bidirectional
    (``use_bidirectional_attention``), with a sliding window of ``sliding_window`` on sliding layers;
    no key past a row's length. One thing differs, at padding positions only: each attends to itself.
    A padding query more than a window past its row's end would otherwise see no key at all, and a
    fully masked row of attention can come out NaN on a GPU; at a real position the mask is the same
    (its own key is always allowed), and no real position attends to padding, so the vectors are too.
    No value is read on the host, so a CUDA graph can capture it."""
    tokens = torch.arange(real.shape[1], device=real.device)
    distance = tokens[:, None] - tokens[None, :]  # query position minus key position
    if bidirectional:
        patterns = {"full_attention": torch.ones_like(distance, dtype=torch.bool),
                    "sliding_attention": distance.abs() < sliding_window}
    else:
        patterns = {"full_attention": distance >= 0,
                    "sliding_attention": (distance >= 0) & (distance < sliding_window)}
    keys = real[:, None, None, :]
    padding_self = (distance == 0) & ~real[:, None, :, None]  # [batch, 1, query, key]
    return {layer_type: (patterns[layer_type] & keys) | padding_self for layer_type in layer_types}


class BucketedForward:
    """The body of a graph, at the shape of its inputs: ids [rows, length] and lengths [rows] in,
    L2-normalised float32 vectors [rows, dimension] out, with the masks built by :func:`attention_masks`."""

    def __init__(self, loaded: LoadedModel) -> None:
        config = loaded.model.config
        self.model = loaded.model
        self.dense = loaded.dense
        self.pooling = loaded.spec.pooling
        self.pad_id = loaded.pad_id
        self.layer_types = set(config.layer_types)
        self.sliding_window = config.sliding_window
        self.bidirectional = bool(config.use_bidirectional_attention)

    def pad(self, batch: list[list[int]], shape: Shape, *, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Host tensors of ``shape``: the sequences right-padded, and a pad token alone in each extra row."""
        rows, length = shape
        ids = torch.full((rows, length), self.pad_id, dtype=torch.long, pin_memory=pin)
        lengths = torch.ones(rows, dtype=torch.long, pin_memory=pin)
        ids_view, lengths_view = ids.numpy(), lengths.numpy()
        for row, seq in enumerate(batch):
            ids_view[row, : len(seq)] = seq
            lengths_view[row] = len(seq)
        return ids, lengths

    def __call__(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        real = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        masks = attention_masks(real, self.layer_types, self.sliding_window, self.bidirectional)
        hidden = self.model(input_ids=ids, attention_mask=masks, use_cache=False).last_hidden_state
        vectors = pool(hidden, real, self.pooling)
        for layer in self.dense:
            vectors = layer(vectors)
        return torch.nn.functional.normalize(vectors, dim=-1)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor  # the static inputs it reads (views of buffers shared by all graphs)...
    lengths: torch.Tensor
    vectors: torch.Tensor  # ...and the static output it writes


@dataclass
class Pending:
    """A submitted batch: :meth:`result` waits for its vectors."""

    done: torch.cuda.Event
    vectors: torch.Tensor  # pinned host memory, filled once ``done`` has passed
    inputs: tuple[torch.Tensor, torch.Tensor]  # the pinned ids and lengths, kept until their copy has run

    def result(self) -> np.ndarray:
        self.done.synchronize()
        return self.vectors.numpy()


class CudaGraphs:
    """The captured graphs of one model on a GPU, and their replay."""

    def __init__(self, loaded: LoadedModel, *, max_batch: int, max_tokens: int) -> None:
        self.forward = BucketedForward(loaded)
        self.dimension = loaded.dimension
        self.shapes = buckets(max_batch, loaded.spec.max_tokens, max_tokens)
        self.name = loaded.spec.name
        self._device = loaded.device
        self._stream = torch.cuda.Stream(loaded.device)
        self._graphs: dict[Shape, _Graph] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every shape, largest first, into one memory pool, each after a warm-up run on the
        capture stream (it creates the cuBLAS handles and workspaces that a capture may not).
        ``thread_local`` capture: another model's thread may run or allocate meanwhile."""
        started = time.perf_counter()
        memory_pool = torch.cuda.graph_pool_handle()
        with torch.cuda.stream(self._stream):  # the static inputs: pad tokens, one per row, until the first copy
            ids = torch.full((max(rows * length for rows, length in self.shapes),), self.forward.pad_id,
                             dtype=torch.long, device=self._device)
            lengths = torch.ones(max(rows for rows, _ in self.shapes), dtype=torch.long, device=self._device)
        self._stream.wait_stream(torch.cuda.current_stream(self._device))
        for rows, length in self.shapes:
            inputs = ids[: rows * length].view(rows, length), lengths[:rows]
            with torch.cuda.stream(self._stream):
                self.forward(*inputs)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=memory_pool, stream=self._stream, capture_error_mode="thread_local"):
                vectors = self.forward(*inputs)
            self._graphs[(rows, length)] = _Graph(graph, *inputs, vectors)
        self._stream.synchronize()
        log.debug("%s: %d CUDA graphs captured in %.1f s", self.name, len(self._graphs), time.perf_counter() - started)

    @torch.inference_mode()
    def submit(self, batch: list[list[int]]) -> Pending | None:
        """Queue a batch's replay and return at once; None if no captured shape holds it."""
        shape = pick(self.shapes, len(batch), max(len(ids) for ids in batch))
        if shape is None:
            return None
        ids, lengths = self.forward.pad(batch, shape, pin=True)
        graph = self._graphs[shape]
        vectors = torch.empty((len(batch), self.dimension), dtype=torch.float32, pin_memory=True)
        done = torch.cuda.Event()
        with torch.cuda.stream(self._stream):
            graph.ids.copy_(ids, non_blocking=True)
            graph.lengths.copy_(lengths, non_blocking=True)
            graph.graph.replay()
            vectors.copy_(graph.vectors[: len(batch)], non_blocking=True)
            done.record()
        return Pending(done, vectors, (ids, lengths))
