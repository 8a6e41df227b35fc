"""The in-process baseline of the embeddings: the server's own forward-pass code, called directly.

It loads the model with ``service.engine.loader.load`` and runs ``Encoder.encode`` -- exactly what
the server's batcher calls -- on the same device and dtype the server picks, so the only thing the
service adds on top is its own work: HTTP, JSON, tokenising, queueing and batching.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from tqdm import tqdm


class InProcessModel:
    def __init__(self, name: str, models_file: str | None, models_dir: Path, device: str = "auto",
                 dtype: str = "auto") -> None:
        from service.engine.encoder import Encoder
        from service.engine.loader import default_batch_tokens, load, pick_device, pick_dtype
        from service.engine.registry import Registry

        spec = Registry.load(models_file or None).get(name)
        if spec is None:
            raise SystemExit(f"model {name!r} is not in the registry (give --models-file for extra entries)")
        self.name = name
        self.spec = spec
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        started = time.perf_counter()
        self.encoder = Encoder(load(spec, models_dir, self.device, self.dtype))
        self.load_s = time.perf_counter() - started
        self.dimension = self.encoder.dimension
        # Padded tokens per forward pass the sweep goes up to: well past the server's default budget, so
        # that the baseline is the hardware's limit for this model, not the server's setting.
        self.token_budget = 8 * default_batch_tokens(self.device)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.encoder.tokenize(texts)

    def _forward(self, batch: list[list[int]]) -> float:
        started = time.perf_counter()
        self.encoder.encode(batch)
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def single_latency(self, sequences: list[list[int]], repeats: int, warmup: bool = True) -> dict[str, float]:
        """Median and mean time of one forward of one sequence (the floor of a request's latency)."""
        if warmup:
            self._forward([sequences[0]])
        times = [self._forward([sequences[i % len(sequences)]]) for i in range(repeats)]
        return {"p50_ms": statistics.median(times) * 1000, "mean_ms": statistics.fmean(times) * 1000,
                "forwards": repeats}

    def throughput(self, sequences: list[list[int]], batch: int, min_seconds: float) -> dict[str, float]:
        """Inputs/s and tokens/s running ``sequences`` in batches of ``batch`` (after one warm-up batch)."""
        n = len(sequences)
        self._forward(sequences[:batch])
        done = tokens = 0
        elapsed = 0.0
        start = 0
        while done == 0 or elapsed < min_seconds:
            chunk = [sequences[(start + j) % n] for j in range(batch)]
            start = (start + batch) % n
            elapsed += self._forward(chunk)
            done += batch
            tokens += sum(len(s) for s in chunk)
        return {"batch": batch, "inputs_per_s": done / elapsed, "tokens_per_s": tokens / elapsed,
                "ms_per_batch": elapsed / (done / batch) * 1000, "inputs": done}

    def sweep(self, sequences: list[list[int]], min_seconds: float, max_batch: int = 256,
              max_forward_s: float | None = None, desc: str = "baseline") -> dict:
        """Throughput at batch sizes 1, 2, 4, ... within ``token_budget``; the best is the limit.

        Every size is measured (no early stop on a noisy dip); the sweep ends past ``max_batch``, past the
        token budget, once one forward pass takes longer than ``max_forward_s`` (bigger batches only cost
        time to measure on a CPU, where throughput has levelled off long before), or once throughput
        collapses below half the best.
        """
        longest = max(len(s) for s in sequences)
        sizes = []
        b = 1
        while b <= max_batch and b * longest <= self.token_budget:
            sizes.append(b)
            b *= 2
        points: list[dict] = []
        best: dict | None = None
        for b in tqdm(sizes, desc=desc, unit="batch size", leave=False, dynamic_ncols=True):
            point = self.throughput(sequences, b, min_seconds)
            points.append(point)
            if best is None or point["inputs_per_s"] > best["inputs_per_s"]:
                best = point
            if max_forward_s is not None and point["ms_per_batch"] > max_forward_s * 1000:
                break
            if point["inputs_per_s"] < 0.5 * best["inputs_per_s"]:
                break
        assert best is not None
        return {"best": best, "sweep": points}
