"""Wire format (msgspec structs) of the OpenAI-compatible endpoints."""

from __future__ import annotations

from typing import Literal

import msgspec

TokenIds = list[int]


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    model: str
    # A string, an array of strings, an array of token ids, or an array of token-id arrays.
    input: str | list[str | int | TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # Extension: cut over-long inputs to the model's limit instead of refusing them (default: server setting).
    truncate: bool | None = None


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    # Floats, or base64 of little-endian float32 bytes when encoding_format is "base64".
    embedding: list[float] | str


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ready", "loading", "error"]
    models: dict[str, str]
