"""Embeddings as a plain Python service: validate inputs, tokenise, batch, shape the response."""

from __future__ import annotations

import asyncio
import base64
from typing import Literal

import numpy as np

from service.api.schemas import Embedding, EmbeddingRequest, EmbeddingResponse, Usage
from service.encoder.batcher import SHARED_KEY
from service.encoder.hub import ModelHub, ServedModel
from service.errors import InvalidRequest

Purpose = Literal["query", "document"]

# Requests with up to this many characters of text are tokenised on the event loop (tens of
# microseconds, less than the hop to a worker thread); bigger ones in a worker thread.
INLINE_TOKENIZE_CHARS = 4096


class EmbeddingsService:
    def __init__(self, hub: ModelHub, *, max_inputs: int, max_request_tokens: int, truncate: bool) -> None:
        self.hub = hub
        self.max_inputs = max_inputs
        self.truncate = truncate
        self.max_request_tokens = max_request_tokens

    async def create(self, request: EmbeddingRequest, *, key: str = SHARED_KEY) -> EmbeddingResponse:
        """Answer POST /v1/embeddings; ``key`` (the tenant) is the batcher's fairness key."""
        served = self.hub.get(request.model)
        encoder = served.encoder
        assert encoder is not None
        if request.dimensions is not None and not 1 <= request.dimensions <= encoder.dimension:
            raise InvalidRequest(
                f"dimensions must be between 1 and {encoder.dimension} for model `{request.model}`, "
                f"got {request.dimensions}.",
                param="dimensions",
            )
        sequences = await self._sequences(served, request.input, request.truncate)
        vectors = await served.batcher.embed(sequences, key=key)
        if request.dimensions is not None and request.dimensions < encoder.dimension:
            vectors = truncate_dimensions(vectors, request.dimensions)
        if request.encoding_format == "base64":
            data = [
                Embedding(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode("ascii"))
                for i, v in enumerate(vectors)
            ]
        else:
            data = [Embedding(index=i, embedding=v) for i, v in enumerate(vectors.tolist())]
        tokens = sum(len(s) for s in sequences)
        return EmbeddingResponse(data=data, model=request.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))

    async def embed_texts(
        self, model: str, texts: list[str], *, purpose: Purpose | None = None, param: str = "input",
        key: str = SHARED_KEY,
    ) -> tuple[np.ndarray, int]:
        """Embed texts for search (with the model's query/document prompt); returns (vectors, tokens).

        ``key`` (the tenant) is the batcher's fairness key."""
        served = self.hub.get(model)
        prompt = {"query": served.spec.query_prompt, "document": served.spec.document_prompt}.get(purpose or "", "")
        if prompt:
            texts = [prompt + text for text in texts]
        sequences = await self._sequences(served, texts, None, param=param)
        return await served.batcher.embed(sequences, key=key), sum(len(s) for s in sequences)

    async def _sequences(
        self, served: ServedModel, value: object, truncate: bool | None, *, param: str = "input"
    ) -> list[list[int]]:
        """Turn any accepted ``input`` shape into token-id sequences, enforcing every limit."""
        encoder = served.encoder
        assert encoder is not None
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
                sequences = encoder.tokenize(items)  # faster than the hop to a worker thread
            else:
                sequences = await asyncio.to_thread(encoder.tokenize, items)
        elif all(isinstance(x, list) for x in items):
            sequences = items
            for i, ids in enumerate(sequences):
                if not ids:
                    raise InvalidRequest(f"input[{i}] is an empty array of token ids.", param=param)
                bad = next((t for t in ids if not 0 <= t < encoder.vocab_size), None)
                if bad is not None:
                    raise InvalidRequest(
                        f"input[{i}] has token id {bad}, outside the vocabulary of `{served.spec.name}` "
                        f"(0..{encoder.vocab_size - 1}).",
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
