"""Find a model's checkpoint on disk (converting a packaged GGUF once) and load it for inference."""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from service.engine.registry import ModelSpec

log = logging.getLogger("service.engine")
CONVERTED_MARK = "embedsearch-converted.json"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """bf16 on CUDA GPUs that have it (fp16 overflows in Gemma's activations), else fp32."""
    if requested == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, requested)


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per forward pass: on the CPU, fastest per token at about 2k (measured in benchmarks/)."""
    return 131072 if device.type == "cuda" else 2048


def convert_gguf(package: str, target: Path) -> Path:
    """Turn the GGUF shipped by ``package`` into a safetensors checkpoint at ``target`` (once).

    Loading a GGUF dequantises every tensor (about half a minute for 270M on two cores); the
    safetensors copy reloads in seconds. The copy is written beside ``target`` and renamed into place,
    so an interrupted conversion never leaves a half-written model behind.
    """
    if (target / CONVERTED_MARK).exists():
        return target
    from transformers import AutoModel, AutoTokenizer

    steps = tqdm(total=4, desc=f"converting {package} to safetensors", unit="step")
    gguf_path = Path(str(importlib.import_module(package).assemble()))
    steps.update()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    steps.update()
    model = AutoModel.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantised; save_pretrained refuses a "quantized" model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    steps.update()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / CONVERTED_MARK).write_text(json.dumps({"source": str(gguf_path)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    steps.update()
    steps.close()
    return target


def checkpoint_dir(spec: ModelSpec, cache: Path) -> str:
    """Local directory (or hub id) that ``from_pretrained`` can read for ``spec``."""
    if spec.source.startswith("gguf:"):
        return str(convert_gguf(spec.source[len("gguf:"):], cache / spec.name.replace(":", "-")))
    return spec.source


@dataclass
class Dense:
    """A sentence-transformers ``Dense`` module (EmbeddingGemma has two after pooling)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.linear(x, self.weight, self.bias)
        return torch.tanh(x) if self.activation.endswith("Tanh") else x


def load_dense_layers(source: str, device: torch.device) -> list[Dense]:
    """Read the Dense modules listed in a sentence-transformers ``modules.json``, if there is one."""
    root = Path(source)
    modules = root / "modules.json"
    if not modules.exists():
        return []
    from safetensors.torch import load_file

    layers = []
    for module in json.loads(modules.read_text()):
        if not module.get("type", "").endswith(".Dense"):
            continue
        folder = root / module["path"]
        config = json.loads((folder / "config.json").read_text())
        weights_file = folder / "model.safetensors"
        weights = load_file(weights_file) if weights_file.exists() else torch.load(folder / "pytorch_model.bin")
        layers.append(
            Dense(
                weight=weights["linear.weight"].to(device, torch.float32),
                bias=weights["linear.bias"].to(device, torch.float32) if config.get("bias", True) else None,
                activation=config.get("activation_function", "Identity"),
            )
        )
    return layers


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    dense: list[Dense]
    device: torch.device
    dimension: int
    vocab_size: int
    pad_id: int


def load(spec: ModelSpec, cache: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load ``spec`` for inference; packaged GGUFs are converted into ``cache`` first."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = checkpoint_dir(spec, cache)
    config = AutoConfig.from_pretrained(source)
    text_config = getattr(config, "text_config", config)
    if spec.bidirectional:
        text_config.use_bidirectional_attention = True
    log.debug("loading %s from %s on %s (%s)", spec.name, source, device, dtype)
    model = AutoModel.from_pretrained(source, config=config, dtype=dtype, attn_implementation="sdpa")
    # Multimodal checkpoints (gemma-3-4b-it, -12b-it): keep the text tower only.
    model = getattr(model, "language_model", model).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    dense = load_dense_layers(source, device)
    dimension = dense[-1].weight.shape[0] if dense else text_config.hidden_size
    if spec.dimension and spec.dimension != dimension:
        raise ValueError(f"{spec.name}: registry says dimension {spec.dimension}, checkpoint gives {dimension}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return LoadedModel(spec, model, tokenizer, dense, device, dimension, text_config.vocab_size, pad_id)
