"""Embeddings: validate inputs, tokenise them, and have the engine embed the token ids.

Returns vectors (numpy) and token counts; the HTTP layer shapes them (floats or base64).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.engine.batcher import SHARED_KEY
from service.engine.served import ServedModel
from service.errors import InvalidRequest

if TYPE_CHECKING:
    from service.engine.engine import Engine

Purpose = Literal["query", "document"]

# Requests with up to this many characters of text are tokenised on the event loop (tens of
# microseconds, less than the hop to a worker thread); bigger ones in a worker thread.
INLINE_TOKENIZE_CHARS = 4096


@dataclass(frozen=True)
class ModelInfo:
    name: str
    created: int
    owned_by: str
    status: str  # loading | ready | error


class Embeddings:
    def __init__(self, engine: Engine, *, max_inputs: int, max_request_tokens: int, truncate: bool) -> None:
        self.engine = engine
        self.max_inputs = max_inputs
        self.truncate = truncate
        self.max_request_tokens = max_request_tokens

    def models(self) -> list[ModelInfo]:
        """Every served model, loaded or not."""
        return [ModelInfo(name, served.created, served.spec.owned_by, served.status)
                for name, served in self.engine.served_models().items()]

    def dimension(self, model: str, param: str = "model") -> int:
        """The vector size of a served, loaded model."""
        return self.engine.model(model, param).dimension

    async def embed(self, model: str, input: object, *, dimensions: int | None = None, truncate: bool | None = None,
                    key: str = SHARED_KEY) -> tuple[np.ndarray, int]:
        """Embed ``input`` (any shape POST /v1/embeddings accepts): (vectors, tokens). ``key`` (the tenant)
        shares the encoder fairly."""
        served = self.engine.model(model)
        if dimensions is not None and not 1 <= dimensions <= served.dimension:
            raise InvalidRequest(
                f"dimensions must be between 1 and {served.dimension} for model `{model}`, got {dimensions}.",
                param="dimensions",
            )
        sequences = await self._sequences(served, input, truncate)
        vectors = await self.engine.embed(model, sequences, key=key)
        if dimensions is not None and dimensions < served.dimension:
            vectors = truncate_dimensions(vectors, dimensions)
        return vectors, sum(len(s) for s in sequences)

    async def embed_texts(
        self, model: str, texts: list[str], *, purpose: Purpose | None = None, param: str = "input",
        key: str = SHARED_KEY,
    ) -> tuple[np.ndarray, int]:
        """Embed texts for search (with the model's query/document prompt); returns (vectors, tokens).

        ``key`` (the tenant) is the batcher's fairness key."""
        served = self.engine.model(model)
        prompt = {"query": served.spec.query_prompt, "document": served.spec.document_prompt}.get(purpose or "", "")
        if prompt:
            texts = [prompt + text for text in texts]
        sequences = await self._sequences(served, texts, None, param=param)
        return await self.engine.embed(model, sequences, key=key), sum(len(s) for s in sequences)

    async def _sequences(
        self, served: ServedModel, value: object, truncate: bool | None, *, param: str = "input"
    ) -> list[list[int]]:
        """Turn any accepted ``input`` shape into token-id sequences, enforcing every limit."""
        tokenizer = served.tokenizer
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise InvalidRequest("input must be a non-empty string or a non-empty array.", param=param)
        if all(isinstance(x, int) for x in items):
            items = [items]  # one input given as an array of token ids
        if len(items) > self.max_inputs:
            raise InvalidRequest(
                f"input has {len(items)} items; at most {self.max_inputs} are allowed per request.", param=param
            )
        if all(isinstance(x, str) for x in items):
            for i, text in enumerate(items):
                if not text:
                    raise InvalidRequest(f"input[{i}] is an empty string.", param=param)
            if sum(len(text) for text in items) <= INLINE_TOKENIZE_CHARS:
                sequences = tokenizer.tokenize(items)  # faster than the hop to a worker thread
            else:
                sequences = await asyncio.to_thread(tokenizer.tokenize, items)
        elif all(isinstance(x, list) for x in items):
            sequences = items
            for i, ids in enumerate(sequences):
                if not ids:
                    raise InvalidRequest(f"input[{i}] is an empty array of token ids.", param=param)
                bad = next((t for t in ids if not 0 <= t < served.vocab_size), None)
                if bad is not None:
                    raise InvalidRequest(
                        f"input[{i}] has token id {bad}, outside the vocabulary of `{served.spec.name}` "
                        f"(0..{served.vocab_size - 1}).",
                        param=param,
                    )
        else:
            raise InvalidRequest(
                "input must be a string, an array of strings, an array of token ids, or an array of "
                "token-id arrays, not a mixture.",
                param=param,
            )
        limit = served.spec.max_tokens
        cut = self.truncate if truncate is None else truncate
        for i, ids in enumerate(sequences):
            if len(ids) > limit:
                if not cut:
                    raise InvalidRequest(
                        f"input[{i}] has {len(ids)} tokens; the maximum for `{served.spec.name}` is {limit}. "
                        "Shorten it, or send \"truncate\": true to cut it.",
                        param=param,
                        code="context_length_exceeded",
                    )
                sequences[i] = ids[:limit]
        self._check_request_tokens(sequences, param)
        return sequences

    def _check_request_tokens(self, sequences: list[list[int]], param: str) -> None:
        """One request may not hold the encoder for long: past the budget (as OpenAI's 300,000 tokens
        summed across inputs), refuse it whole; the client can split it into several requests."""
        total = sum(len(ids) for ids in sequences)
        if total > self.max_request_tokens:
            raise InvalidRequest(
                f"{param} has {total} tokens in all; at most {self.max_request_tokens} are allowed per request. "
                "Split it across several requests.",
                param=param,
                code="max_tokens_per_request",
            )


def truncate_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka truncation: keep the leading dimensions, then re-normalise."""
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)
