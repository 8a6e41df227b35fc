"""Shaping domain answers into the wire format, and the small codecs only the wire has (cursors,
filters in a query string, vectors as JSON numbers or as base64 of little-endian float32)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import msgspec
import numpy as np

from service.api import schemas
from service.api.limits import check_json_depth
from service.domain.collections import CollectionInfo
from service.domain.fusion import Ranked
from service.domain.search import Found
from service.errors import InvalidRequest
from service.store.documents import StoredDocument

# Answers with at most this many hits and no vectors are shaped on the event loop (less than the hop to
# a worker thread costs); bigger ones in a worker thread, so that they never hold the loop.
INLINE_HITS = 64


def collection(info: CollectionInfo) -> schemas.Collection:
    return schemas.Collection(name=info.name, model=info.model, dimension=info.dimension, metric=info.metric,
                              index=info.index, count=info.count, indexed=info.indexed,
                              created_at=int(info.created_at.timestamp()), status=info.status)


def vector_out(blob: bytes, encoding: str) -> list[float] | str:
    """A stored vector (little-endian float32) as JSON numbers, or as base64 of those very bytes."""
    if encoding == "base64":
        return base64.b64encode(blob).decode("ascii")
    return np.frombuffer(blob, dtype="<f4").tolist()


def _b64decode(value: str) -> bytes:
    """Padded base64 in the standard alphabet (``+/``) or the URL-safe one (``-_``), not a mix of the two."""
    if "-" in value or "_" in value:
        if "+" in value or "/" in value:
            raise binascii.Error("two base64 alphabets in one string")
        return base64.b64decode(value, altchars=b"-_", validate=True)
    return base64.b64decode(value, validate=True)


def vector_in(value: list[float] | str, where: str, param: str) -> list[float] | np.ndarray:
    """A vector as sent: JSON numbers pass through (the domain checks them), base64 becomes float32."""
    if not isinstance(value, str):
        return value
    try:
        raw = _b64decode(value)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where} is a string but not base64 (of little-endian float32 values).",
                             param=param) from None
    if len(raw) % 4:
        raise InvalidRequest(f"{where} decodes to {len(raw)} bytes, not a whole number of float32 values "
                             "(4 bytes each).", param=param)
    return np.frombuffer(raw, dtype="<f4")


def document(doc: StoredDocument, with_vector: bool, encoding: str = "float") -> schemas.Document:
    # metadata as stored: JSON text embedded in the answer as it is, never parsed on the way
    return schemas.Document(id=doc.id, text=doc.text, metadata=msgspec.Raw(doc.metadata_json),
                            vector=vector_out(doc.vector, encoding) if with_vector else None)


def found(answer: Found, include: set[str], single: bool, encoding: str = "float", explain: bool = False) -> bytes:
    """The JSON of a SearchResponse (one query) or a BatchSearchResponse (several)."""
    text, metadata, vector = "text" in include, "metadata" in include, "vector" in include
    lists = [[schemas.Hit(id=hit.document.id, score=hit.score, text=hit.document.text if text else None,
                          metadata=msgspec.Raw(hit.document.metadata_json) if metadata else None,
                          vector=vector_out(hit.document.vector, encoding) if vector else None,
                          explain=schemas.Explain(dense=_branch(hit.dense), keyword=_branch(hit.keyword))
                          if explain else None)
              for hit in hits] for hits in answer.hits]
    usage = schemas.Usage(prompt_tokens=answer.tokens, total_tokens=answer.tokens)
    if single:
        return msgspec.json.encode(schemas.SearchResponse(data=lists[0], usage=usage))
    return msgspec.json.encode(schemas.BatchSearchResponse(data=lists, usage=usage))


def _branch(ranked: Ranked | None) -> schemas.Branch | None:
    return schemas.Branch(rank=ranked.rank, score=ranked.score) if ranked is not None else None


def shaped_inline(answer: Found, include: set[str]) -> bool:
    return "vector" not in include and sum(len(hits) for hits in answer.hits) <= INLINE_HITS


def encode_cursor(doc_id: str) -> str:
    return base64.urlsafe_b64encode(doc_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        after = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = "\x00"
    if "\x00" in after:  # no id holds NUL (and PostgreSQL could not compare with one)
        raise InvalidRequest("cursor is not one this server gave out.", param="cursor")
    return after


def filter_param(value: str | None) -> Any:
    """The ``filter`` query parameter: JSON, depth-checked before it is parsed."""
    if value is None:
        return None
    check_json_depth(value, what="filter", param="filter")  # json.loads recurses per level
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"filter is not valid JSON: {exc.msg}.", param="filter") from None
