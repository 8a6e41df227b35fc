"""The encoder's CUDA-graph path (service/engine/graphs.py).

On the CPU: the bucket choice, the prebuilt masks against the ones transformers builds in the eager
forward, and the bucketed forward (padded to its bucket, prebuilt masks, pooling, dense layers and
normalisation, with no graph) against the eager encoder; and, on the meta device, that the bucketed
forward reads no tensor value on the host, which a CUDA graph could not capture. With a GPU: capture,
replay and fallback against the eager encoder in bf16.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from benchmarks.tiny_model import save_tiny_gemma
from service.engine.encoder import Encoder
from service.engine.graphs import BucketedForward, attention_masks, buckets, pick
from service.engine.loader import Dense, LoadedModel, load
from service.engine.registry import ModelSpec, Pooling, Registry
from tests.conftest import real_model_cache

pytestmark = pytest.mark.unit

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
POOLINGS = typing.get_args(Pooling)
WINDOW = 16  # the tiny model's sliding window


def tiny_gemma(path: Path, *, dense_out: int | None = None, sliding_window: int = WINDOW) -> Path:
    """The tests' tiny Gemma 3 with one sliding-window layer and one full-attention layer."""
    save_tiny_gemma(path, dense_out=dense_out)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config.update(layer_types=["sliding_attention", "full_attention"], sliding_window=sliding_window,
                  max_position_embeddings=2048)
    config_file.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """Without and with dense layers."""
    root = tmp_path_factory.mktemp("graphs")
    return {False: tiny_gemma(root / "plain"), True: tiny_gemma(root / "dense", dense_out=16)}


def load_tiny(checkpoint: Path, device: str = "cpu", dtype: torch.dtype = torch.float32, **spec: object) -> LoadedModel:
    return load(ModelSpec(name="tiny", source=str(checkpoint), max_tokens=64, **spec), Path("unused"),
                torch.device(device), dtype)


def sequences(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Token ids of the given lengths: BOS, then random words of the tiny vocabulary."""
    rng = np.random.default_rng(seed)
    return [[2, *rng.integers(4, 60, size=n - 1).tolist()] for n in lengths]


# Each batch covers a case: one sequence past the sliding window, mixed lengths in one batch (one past
# the window), a batch needing padding rows, lengths on and just past bucket edges, a lone short input.
BATCHES = [[40], [3, 10, 17, 40], [5, 33, 2], [16, 24, 25, 64, 1], [2]]


@torch.inference_mode()
def bucketed(forward: BucketedForward, batch: list[list[int]], shapes: list[tuple[int, int]]) -> np.ndarray:
    """What a graph replay computes, run eagerly: pad to the bucket, prebuilt masks, pool, normalise."""
    shape = pick(shapes, len(batch), max(map(len, batch)))
    assert shape is not None
    ids, lengths = forward.pad(batch, shape)
    vectors = forward(ids.to(forward.model.device), lengths.to(forward.model.device))
    assert vectors.shape[0] == shape[0]
    return vectors[: len(batch)].float().cpu().numpy()


def assert_same_vectors(got: np.ndarray, want: np.ndarray, min_cosine: float) -> None:
    assert got.shape == want.shape
    cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosines.min() >= min_cosine, cosines


def test_buckets_are_powers_of_two_in_batch_finer_in_length_within_the_token_budget():
    shapes = buckets(256, 2048, 131072)
    assert len(shapes) == len(set(shapes))
    assert all(rows * length <= 131072 for rows, length in shapes)
    areas = [rows * length for rows, length in shapes]
    assert areas == sorted(areas, reverse=True)  # largest first: the order of capture
    assert sorted({rows for rows, _ in shapes}) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert sorted({length for _, length in shapes}) == [
        16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
    assert (256, 512) in shapes and (64, 2048) in shapes and (128, 1024) in shapes
    assert (256, 768) not in shapes and (128, 1536) not in shapes
    # limits off the ladder are buckets themselves
    assert sorted({length for _, length in buckets(100, 100, 10**9)}) == [16, 24, 32, 48, 64, 96, 100]
    assert sorted({rows for rows, _ in buckets(100, 100, 10**9)}) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert buckets(1, 8, 8) == [(1, 8)]


def test_a_batch_gets_the_smallest_bucket_that_holds_it_or_none_past_them():
    shapes = buckets(256, 2048, 131072)
    assert pick(shapes, 1, 1) == (1, 16)
    assert pick(shapes, 3, 20) == (4, 24)
    assert pick(shapes, 4, 24) == (4, 24)
    assert pick(shapes, 5, 25) == (8, 32)
    assert pick(shapes, 256, 512) == (256, 512)
    assert pick(shapes, 1, 2048) == (1, 2048)
    assert pick(shapes, 64, 1100) == (64, 1536)
    # past the largest buckets: the eager forward
    assert pick(shapes, 257, 10) is None
    assert pick(shapes, 1, 2049) is None
    assert pick(shapes, 100, 1100) is None  # within the batcher's budget, but its bucket would not be


@pytest.mark.parametrize("bidirectional", [False, True])
def test_prebuilt_masks_equal_the_ones_transformers_builds_in_the_eager_forward(checkpoints, bidirectional):
    loaded = load_tiny(checkpoints[False], bidirectional=bidirectional)
    model, lengths = loaded.model, [40, 3, 17, 1, 16]
    width = max(lengths)
    real = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    seen: dict[str, torch.Tensor] = {}

    def record(layer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen[model.config.layer_types[layer.self_attn.layer_idx]] = kwargs["attention_mask"]

    hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in model.layers]
    try:
        with torch.inference_mode():
            model(input_ids=torch.full((len(lengths), width), 2), attention_mask=real.long())
    finally:
        for hook in hooks:
            hook.remove()

    ours = attention_masks(real, set(model.config.layer_types), model.config.sliding_window, bidirectional)
    assert set(ours) == set(seen) == {"full_attention", "sliding_attention"}
    for layer_type, mask in seen.items():
        assert mask.dtype == torch.bool and mask.shape == (len(lengths), 1, width, width)
        queries = real[:, None, :, None]  # at real positions: the same masks
        assert torch.equal(ours[layer_type] & queries, mask & queries), layer_type
        # at padding positions: what transformers allows, and the position itself (never a row of nothing)
        assert torch.equal(ours[layer_type] & ~queries, (mask | torch.eye(width, dtype=torch.bool)) & ~queries)
        assert ours[layer_type].any(dim=-1).all()
    # the window bites: row 0 (40 tokens) sees fewer keys in the sliding layer than in the full one
    assert ours["sliding_attention"][0].sum() < ours["full_attention"][0].sum()
    assert not ours["full_attention"][1, 0, :3, 3:].any()  # no real position sees a key past its row's length


@pytest.mark.parametrize("dense", [False, True], ids=["plain", "dense"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_the_bucketed_forward_with_prebuilt_masks_equals_the_eager_encoder(checkpoints, pooling, bidirectional, dense):
    loaded = load_tiny(checkpoints[dense], pooling=pooling, bidirectional=bidirectional)
    assert bool(loaded.dense) == dense and loaded.model.config.sliding_window == WINDOW
    encoder, forward = Encoder(loaded), BucketedForward(loaded)
    shapes = buckets(8, loaded.spec.max_tokens, 8 * 64)
    for lengths in BATCHES:
        batch = sequences(lengths, seed=len(lengths))
        want = encoder.encode(batch)
        got = bucketed(forward, batch, shapes)
        assert_same_vectors(got, want, 0.99999)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_encoder_on_the_cpu_never_captures(checkpoints):
    loaded = load_tiny(checkpoints[False])
    assert Encoder(loaded, cuda_graphs=True).graphs is None


def test_the_bucketed_forward_reads_no_value_on_the_host(checkpoints):
    """On the meta device a tensor has no values: a forward that branches on one (``.item()``, ``if
    tensor``) fails there, and could not be captured either."""
    ids = torch.zeros((4, 48), dtype=torch.long, device="meta")
    lengths = torch.ones(4, dtype=torch.long, device="meta")
    for dense, bidirectional in ((False, False), (True, True)):
        loaded = load_tiny(checkpoints[dense], pooling="last", bidirectional=bidirectional)
        meta = dataclasses.replace(
            loaded, model=loaded.model.to("meta"), device=torch.device("meta"),
            dense=[Dense(layer.weight.to("meta"), None, layer.activation) for layer in loaded.dense])
        with torch.inference_mode():
            assert BucketedForward(meta)(ids, lengths).shape == (4, meta.dimension)
            if not bidirectional:  # the check bites: transformers' causal mask code asks whether any key is padding
                with pytest.raises(RuntimeError, match="meta tensors"):
                    meta.model(input_ids=ids, attention_mask=torch.ones((4, 48), dtype=torch.long, device="meta"))


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_the_bucketed_forward_of_the_real_gemma3_270m_equals_its_eager_forward(bidirectional):
    """18 layers, a full-attention layer every sixth, a sliding window of 512: in fp32, equal."""
    spec = msgspec.structs.replace(Registry.load().get("gemma3:270m"), bidirectional=bidirectional)
    loaded = load(spec, real_model_cache(), torch.device("cpu"), torch.float32)
    assert loaded.model.config.sliding_window == 512 and "full_attention" in loaded.model.config.layer_types
    rng = np.random.default_rng(0)
    batch = [[2, *rng.integers(10, loaded.vocab_size, size=n - 1).tolist()] for n in (600, 3, 520)]
    got = bucketed(BucketedForward(loaded), batch, buckets(256, spec.max_tokens, 131072))
    want = Encoder(loaded).encode(batch)
    assert_same_vectors(got, want, 0.99999)
    np.testing.assert_allclose(got, want, atol=1e-5)


# --- on a GPU ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M's sliding window (512), at the tiny model's size."""
    return tiny_gemma(tmp_path_factory.mktemp("graphs-gpu") / "tiny", dense_out=16, sliding_window=512)


def gpu_pair(checkpoint: Path, **spec: object) -> tuple[Encoder, Encoder]:
    """The same bf16 model on the GPU with graphs (up to 8 rows, 8192 tokens) and without."""
    loaded = load(ModelSpec(name="tiny", source=str(checkpoint), max_tokens=1024, **spec), Path("unused"),
                  torch.device("cuda"), torch.bfloat16)
    return Encoder(loaded, cuda_graphs=True, max_batch=8, max_tokens=8192), Encoder(loaded, cuda_graphs=False)


GPU_BATCHES = [[700], [5, 100, 513, 700], [3, 40, 2], [16, 24, 25, 1024, 1], [2]]


@cuda
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_cuda_graphs_replay_what_the_eager_forward_computes(gpu_checkpoint, pooling, bidirectional):
    graphed, eager = gpu_pair(gpu_checkpoint, pooling=pooling, bidirectional=bidirectional)
    assert graphed.graphs is not None and eager.graphs is None
    assert graphed.graphs.shapes[0] == (8, 1024)  # 8 x 1024 = the 8192-token budget
    for lengths in GPU_BATCHES:
        batch = sequences(lengths, seed=len(lengths))
        assert graphed.graphs.submit(batch) is not None
        assert_same_vectors(graphed.encode(batch), eager.encode(batch), 0.999)


@cuda
def test_cuda_graphs_run_no_python_forward_and_fall_back_past_the_largest_bucket(gpu_checkpoint):
    graphed, eager = gpu_pair(gpu_checkpoint)
    calls = []
    graphed.loaded.model.register_forward_pre_hook(lambda *args: calls.append(1))

    def forwards_run(batch: list[list[int]]) -> int:
        before = len(calls)
        got = graphed.encode(batch)
        ran = len(calls) - before
        assert_same_vectors(got, eager.encode(batch), 0.999)
        return ran

    assert forwards_run(sequences([5, 600, 30])) == 0  # replayed, not run
    for past in (sequences([10] * 9), sequences([1025])):  # more rows, or a longer sequence, than any bucket
        assert graphed.graphs.submit(past) is None
        assert forwards_run(past) == 1  # the eager forward


@cuda
def test_batches_submitted_before_earlier_ones_are_read_keep_their_own_vectors(gpu_checkpoint):
    graphed, eager = gpu_pair(gpu_checkpoint)
    batches = [sequences([7, 30], seed=1), sequences([9, 31], seed=2), sequences([600], seed=3), sequences([4], seed=4)]
    # the first two share a bucket: the second's inputs overwrite its static buffers before the first is read
    pending = [graphed.submit(batch) for batch in batches]
    for batch, result in reversed(list(zip(batches, pending))):
        assert_same_vectors(result(), eager.encode(batch), 0.999)


@cuda
@pytest.mark.system
@pytest.mark.slow
def test_cuda_graphs_of_the_real_gemma3_270m_match_its_eager_forward():
    loaded = load(Registry.load().get("gemma3:270m"), real_model_cache(), torch.device("cuda"), torch.bfloat16)
    assert loaded.model.config.sliding_window == 512
    graphed, eager = Encoder(loaded, cuda_graphs=True), Encoder(loaded, cuda_graphs=False)
    rng = np.random.default_rng(0)
    for lengths in ([900], [3, 64, 511, 513, 1500], [12] * 37, [2048, 7]):
        batch = [[2, *rng.integers(10, loaded.vocab_size, size=n - 1).tolist()] for n in lengths]
        assert graphed.graphs.submit(batch) is not None
        assert_same_vectors(graphed.encode(batch), eager.encode(batch), 0.999)
