"""Wire format (msgspec structs) of every route; only the HTTP layer (service/api/) knows it.

Request bodies are decoded strictly: a field this server does not know is a 400
``unknown_parameter`` naming it (a misspelled ``"filtr"`` must not silently search everything), and
the OpenAPI schema says so (``additionalProperties: false``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

TokenIds = list[int]


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A request body: unknown fields are refused."""


class EmbeddingRequest(Request):
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


# -- collections and documents ---------------------------------------------------------------

Metric = Literal["cosine", "dot", "l2"]
Filter = dict[str, Any]
Include = Literal["text", "metadata", "vector"]
# A vector as JSON numbers, or as base64 (standard or URL-safe alphabet, padded) of its little-endian float32
# bytes (the embeddings' base64 format): a quarter of the bytes to send and to parse.
Vector = list[float] | str
EncodingFormat = Literal["float", "base64"]


class CollectionCreate(Request):
    name: str
    # An embeddings model: documents and queries may then be given as text.
    model: str | None = None
    # Required without a model; with one, defaults to the model's size (smaller = Matryoshka truncation).
    dimension: int | None = None
    metric: Metric = "cosine"
    # A FAISS index_factory string: Flat, HNSW32, IVF1024,Flat, IVF256,PQ16, ...
    index: str = "Flat"


class Collection(msgspec.Struct, kw_only=True):
    object: Literal["collection"] = "collection"
    name: str
    model: str | None
    dimension: int
    metric: Metric
    index: str
    count: int  # documents in SQL
    indexed: int  # vectors in the FAISS index (equal to count once every write is applied)
    created_at: int
    # unavailable: its index could not be opened (the server log says why); only DELETE works on it.
    status: Literal["ready", "unavailable"] = "ready"


class CollectionList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Collection]
    # Pass as `cursor` to get the next page; null on the last page.
    next_cursor: str | None = None
    has_more: bool = False


class Deleted(msgspec.Struct, kw_only=True):
    id: str
    object: str
    deleted: bool = True


class DeletedKey(msgspec.Struct, kw_only=True):
    """A revoked key: its id an integer, as GET /v1/keys lists it."""

    id: int
    object: Literal["api_key"] = "api_key"
    deleted: bool = True


class DocumentIn(Request):
    id: str | None = None
    text: str | None = None
    vector: Vector | None = None
    metadata: dict[str, Any] | None = None


class UpsertRequest(Request):
    documents: list[DocumentIn]


class UpsertResponse(msgspec.Struct, kw_only=True):
    ids: list[str]
    upserted: int
    usage: Usage


class Document(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    text: str | None = None
    metadata: dict[str, Any] = {}  # filled with the stored JSON as msgspec.Raw: encoded without a parse
    vector: Vector | None = None  # as the request's encoding_format says


class DocumentPage(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Document]
    # Pass as `cursor` to get the next page; null on the last page.
    next_cursor: str | None
    has_more: bool


class DeleteRequest(Request):
    ids: list[str] | None = None
    filter: Filter | None = None


class GetRequest(Request):
    ids: list[str]  # 1 to 1000; the answer keeps their order and leaves out ids with no document
    include: list[Literal["vector"]] = []
    encoding_format: EncodingFormat = "float"


class DocumentList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Document]


class DeleteResponse(msgspec.Struct, kw_only=True):
    deleted: int


class FusionWeights(Request):
    dense: float = 1.0
    keyword: float = 1.0


class FusionParams(Request):
    """Hybrid search's fusion of its dense and keyword rankings. `method` `rrf` (the default), reciprocal rank
    fusion: a hit scores the sum over the branches that found it of weight / (k + rank), with `k` (1 to
    10000, default 60) and `weights`. `weighted`: each branch's scores min-max normalised, then alpha x dense
    + (1 - alpha) x keyword, with `alpha` (0 to 1, default 0.5). A field of the other method is a 400."""

    method: Literal["rrf", "weighted"] = "rrf"
    k: int | None = None  # rrf only: 1 to MAX_RRF_K (service/domain/validation.py), default 60
    weights: FusionWeights | None = None  # rrf only: default 1 and 1
    alpha: float | None = None  # weighted only: the dense share, 0 to 1, default 0.5
    candidates: int | None = None  # hits each branch contributes, top_k to 1000; default: 100, or top_k if more


class SearchRequest(Request):
    # Exactly one of: query (text), vector, queries (texts), vectors.
    query: str | None = None
    vector: Vector | None = None
    queries: list[str] | None = None
    vectors: list[Vector] | None = None
    top_k: int = 10
    filter: Filter | None = None
    include: list[Include] = msgspec.field(default_factory=lambda: ["text", "metadata"])
    # cosine and dot: keep hits scoring at least this; l2: keep hits at most this far.
    min_score: float | None = None
    # How vectors come back with include=vector: JSON numbers, or base64 little-endian float32.
    encoding_format: EncodingFormat = "float"
    # dense: nearest vectors; keyword: BM25 over the documents' text; hybrid: both, fused (`fusion`).
    mode: Literal["dense", "keyword", "hybrid"] = "dense"
    # The keyword query of keyword and hybrid modes; defaults to `query` (or each of `queries`); needed with `vector`.
    keyword: str | None = None
    # Hybrid mode's fusion; default {"method": "rrf", "k": 60, "weights": {"dense": 1, "keyword": 1}}.
    fusion: FusionParams | None = None
    # Add each hit's rank and score in each branch that found it.
    explain: bool = False


class Branch(msgspec.Struct, kw_only=True):
    rank: int  # from 1
    score: float  # the branch's own: dense as `score` in dense mode, keyword BM25


class Explain(msgspec.Struct, kw_only=True):
    dense: Branch | None  # null: the branch did not find it (or did not run)
    keyword: Branch | None


class Hit(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    # dense mode: cosine similarity (cosine), inner product (dot), both higher is better, or Euclidean distance
    # (l2, lower is better); keyword mode: BM25; hybrid mode: the fused score (higher is better).
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None  # filled with the stored JSON as msgspec.Raw, like Document's
    vector: Vector | None = None  # as the request's encoding_format says
    explain: Explain | None = None  # with `explain: true`


class SearchResponse(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Hit]
    usage: Usage


class BatchSearchResponse(msgspec.Struct, kw_only=True):
    """For `queries` / `vectors`: one list of hits per query, in order."""

    object: Literal["list"] = "list"
    # Never empty (there is at least one query): this tells it apart from a SearchResponse with no hits,
    # so the OpenAPI `oneOf` of the search response matches exactly one of the two.
    data: Annotated[list[list[Hit]], msgspec.Meta(min_length=1)]
    usage: Usage


# -- errors ----------------------------------------------------------------------------------


class KeyCreate(Request):
    tenant: str  # 1-64 characters; not `admin` (admin keys are made with `python -m service keys create --admin`)


class ApiKey(msgspec.Struct, kw_only=True, omit_defaults=True):
    object: Literal["api_key"] = "api_key"
    id: int
    tenant: str
    prefix: str  # the key's first characters, to tell keys apart
    admin: bool
    created_at: int
    key: str | None = None  # the key itself: only in the answer that made it, never again


class ApiKeyList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ApiKey]


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    # invalid_request_error, rate_limit_error or server_error
    type: str
    # The request field at fault (top-level name), when there is one.
    param: str | None
    # Machine-readable: invalid_request, invalid_api_key, not_found, context_length_exceeded, ...
    code: str | None


class ErrorResponse(msgspec.Struct, kw_only=True):
    """Every error body, in OpenAI's shape."""

    error: ErrorDetail
