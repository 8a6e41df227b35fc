"""What the sync and the async client share: each route as a ``Call`` (method, path, body, and how to read
the answer), the wire codecs, batching under the server's limits, and the retry policy. Neither does I/O."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import random
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
from tqdm.auto import tqdm

from embedsearch.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    EmbedsearchError,
    RequestTooLargeError,
)
from embedsearch.types import (
    ApiKey,
    CollectionInfo,
    Document,
    DocumentLike,
    Filter,
    Hit,
    Include,
    Mode,
    Model,
    Page,
    VectorLike,
)

T = TypeVar("T")

DEFAULT_BASE_URL = "http://localhost:8000/v1"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3

# The server's limits per request (service/domain/validation.py; a test keeps them equal).
MAX_DOCUMENTS = 1000  # per upsert
MAX_GET_IDS = 1000  # per documents/get
MAX_PAGE = 1000  # documents or collections per page
MAX_DELETE_IDS = 10_000  # per documents/delete
MAX_INPUTS = 2048  # embeddings inputs per request
MAX_QUERIES = 256  # per search
MAX_TOP_K = 1000  # hits per query
MAX_SEARCH_HITS = 10_000  # queries x top_k of one search
# Kept under by each batch the client makes: a quarter of the default 32 MiB body limit, and the
# 300,000 tokens one request may embed (a token is at least one UTF-8 byte, plus two per text).
BATCH_BYTES = 8 << 20
BATCH_TEXT_BYTES = 250_000

# Retried: the server said "later" (429, 503), or no answer came because the connection could not be
# made or the server closed it (a stale keep-alive connection, a worker restarting). Writes are safe to
# send again: upserts carry their ids (made here when missing), deletes are idempotent.
RETRY_STATUSES = frozenset({429, 503})
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
MAX_RETRY_AFTER = 60.0


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class ClientBase(Generic[H]):
    """What both clients share: their settings, the httpx client they own (or were given) and retries."""

    _http_class: type[H]

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 default_headers: Mapping[str, str] | None = None, http_client: H | None = None) -> None:
        url = (base_url or os.environ.get("EMBEDSEARCH_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = api_key or os.environ.get("EMBEDSEARCH_API_KEY")
        if not key:
            raise EmbedsearchError("No API key: pass api_key=... or set EMBEDSEARCH_API_KEY.")
        root = url.removesuffix("/v1")  # the API root, as openai's base URL; the server's root taken as well
        self.base_url = root + "/v1"
        self.api_key = key
        self._retries = Retries(max_retries)
        self._owned = http_client is None
        self._http: H = http_client or self._http_class(timeout=timeout)
        self._http.base_url = httpx.URL(root)
        self._http.headers.update({"Authorization": f"Bearer {key}", "User-Agent": "embedsearch-python",
                                   **(default_headers or {})})


@dataclass
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    # /ready answers 503 with its body while the server is not ready: that body is the answer.
    any_status: bool = False
    text: bool = False  # the answer is plain text (metrics), not JSON


def read(call: Call[T], response: httpx.Response) -> T:
    return call.parse(response.text if call.text else response.json())


# -- retries -------------------------------------------------------------------------------------


class Retries:
    """How long to wait before the next try, or None to give up. Exponential backoff with jitter (0.5 s,
    1 s, 2 s, ... up to 8 s), or what the server's Retry-After says (at most a minute)."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def after_status(self, attempt: int, response: httpx.Response) -> float | None:
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        told = retry_after(response.headers.get("retry-after"))
        return told if told is not None else self.backoff(attempt)

    def after_error(self, attempt: int, exc: httpx.TransportError) -> float | None:
        if not isinstance(exc, RETRY_ERRORS) or attempt >= self.max_retries:
            return None
        return self.backoff(attempt)

    @staticmethod
    def backoff(attempt: int) -> float:
        return min(8.0, 0.5 * 2 ** attempt) * random.uniform(0.75, 1.0)


def connection_error(call: Call[Any], exc: httpx.TransportError) -> APIConnectionError:
    kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return kind(f"{call.method} {call.path}: {exc!r}", exc.request)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# -- codecs --------------------------------------------------------------------------------------


def vector_out(vector: VectorLike) -> str:
    """A vector as base64 of its little-endian float32 bytes: a quarter of the bytes of JSON numbers."""
    array = np.asarray(vector, dtype="<f4")
    if array.ndim != 1:
        raise ValueError(f"a vector must be one-dimensional, got shape {array.shape}")
    return base64.b64encode(array.tobytes()).decode("ascii")


def vectors_out(vectors: np.ndarray | Sequence[VectorLike]) -> list[str]:
    return [vector_out(v) for v in vectors]


def vector_in(value: str | list[float]) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def _time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def collection_info(body: dict[str, Any]) -> CollectionInfo:
    return CollectionInfo(name=body["name"], model=body["model"], dimension=body["dimension"],
                          metric=body["metric"], index=body["index"], count=body["count"], indexed=body["indexed"],
                          created_at=_time(body["created_at"]), status=body.get("status", "ready"))


def document(body: dict[str, Any]) -> Document:
    vector = body.get("vector")
    return Document(id=body["id"], text=body.get("text"), metadata=body.get("metadata") or {},
                    vector=vector_in(vector) if vector is not None else None)


def hits(found: list[dict[str, Any]]) -> list[Hit]:
    return [Hit(id=h["id"], score=h["score"], text=h.get("text"), metadata=h.get("metadata"),
                vector=vector_in(h["vector"]) if h.get("vector") is not None else None, explain=h.get("explain"))
            for h in found]


def api_key(body: dict[str, Any]) -> ApiKey:
    return ApiKey(id=body["id"], tenant=body["tenant"], prefix=body["prefix"], admin=body["admin"],
                  created_at=_time(body["created_at"]), key=body.get("key"))


def document_in(doc: DocumentLike) -> dict[str, Any]:
    """A document as the server takes it, with an id: one made here (a UUID) where it has none."""
    if isinstance(doc, Document):
        doc_id, text, metadata, vector = doc.id, doc.text, doc.metadata, doc.vector
    else:
        unknown = set(doc) - {"id", "text", "metadata", "vector"}
        if unknown:
            raise ValueError(f"a document has id, text, metadata and vector, not {sorted(unknown)}")
        doc_id, text, metadata, vector = doc.get("id"), doc.get("text"), doc.get("metadata"), doc.get("vector")
    out: dict[str, Any] = {"id": uuid.uuid4().hex if doc_id is None else str(doc_id)}
    if text is not None:
        out["text"] = text
    if metadata:
        out["metadata"] = dict(metadata)
    if vector is not None:
        out["vector"] = vector_out(vector)
    return out


def _document_path(name: str, doc_id: str) -> str:
    # every character but unreserved ones escaped ("/" too); "." and ".." as %2E so no client resolves them
    escaped = quote(doc_id, safe="")
    return f"/v1/collections/{name}/documents/" + (escaped.replace(".", "%2E") if set(doc_id) == {"."} else escaped)


# -- batching --------------------------------------------------------------------------------------


def _size(item: dict[str, Any] | str) -> tuple[int, int]:
    """(about the bytes it adds to a body, the bytes of text it has embedded)."""
    if isinstance(item, str):
        text = len(item.encode("utf-8", "surrogatepass")) + 2
        return text, text
    text = len(item["text"].encode("utf-8", "surrogatepass")) + 2 if "text" in item and "vector" not in item else 0
    size = len(item.get("text", "")) * 2 + len(item.get("vector", "")) + len(item["id"]) + 64
    if "metadata" in item:
        size += len(json.dumps(item["metadata"]))
    return size, text


_END = object()


class Batches(Generic[T]):
    """Items cut into requests the server takes, as they are read (a large upsert is never all in memory
    at once): at most ``limit`` items, BATCH_BYTES of body and BATCH_TEXT_BYTES of text to embed each.
    A batch the server still finds too large (413, or too many tokens) comes again in halves after
    ``split``, so batches succeed in the items' order."""

    def __init__(self, items: Iterable[T], limit: int) -> None:
        self.items = iter(items)
        self.limit = limit
        self.again: deque[list[T]] = deque()
        self.next: Any = _END  # read, but past the last batch's limits

    def __iter__(self) -> Iterator[list[T]]:
        while True:
            if self.again:
                yield self.again.popleft()
                continue
            batch = self._read()
            if not batch:
                return
            yield batch

    def _read(self) -> list[T]:
        batch: list[T] = []
        size = text = 0
        while True:
            item = self.next if self.next is not _END else next(self.items, _END)
            self.next = _END
            if item is _END:
                return batch
            more, more_text = _size(item)  # type: ignore[arg-type]
            if batch and (len(batch) >= self.limit or size + more > BATCH_BYTES or text + more_text > BATCH_TEXT_BYTES):
                self.next = item
                return batch
            batch.append(item)
            size, text = size + more, text + more_text

    def split(self, batch: list[T], exc: APIStatusError) -> None:
        """Queue ``batch`` again in halves when ``exc`` says it was too large; otherwise re-raise ``exc``."""
        too_large = isinstance(exc, RequestTooLargeError) or (
            isinstance(exc, BadRequestError) and exc.code == "max_tokens_per_request")
        if not too_large or len(batch) < 2:
            raise exc
        half = len(batch) // 2
        self.again.extendleft([batch[half:], batch[:half]])


def progress(items: Iterable[Any], description: str, show: bool | None, limit: int) -> tqdm:
    """A progress bar over ``items``: shown when asked, or by default on a terminal for more than one
    batch of ``limit`` (or an unknown number)."""
    total = len(items) if isinstance(items, Sized) else None
    if show is None:
        show = (total is None or total > limit) and sys.stderr.isatty()
    return tqdm(total=total, desc=description, unit="doc", unit_scale=True, disable=not show)  # left on screen


# -- routes ----------------------------------------------------------------------------------------


def embed(texts: list[str], model: str, dimensions: int | None, truncate: bool | None) -> Call[np.ndarray]:
    body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "base64"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    if truncate is not None:
        body["truncate"] = truncate

    def parse(answer: dict[str, Any]) -> np.ndarray:
        rows = sorted(answer["data"], key=lambda item: item["index"])
        return np.stack([vector_in(row["embedding"]) for row in rows])

    return Call("POST", "/v1/embeddings", parse, json=body)


def list_models() -> Call[list[Model]]:
    return Call("GET", "/v1/models", lambda body: [_model(m) for m in body["data"]])


def get_model(model_id: str) -> Call[Model]:
    return Call("GET", f"/v1/models/{quote(model_id, safe='')}", _model)


def _model(body: dict[str, Any]) -> Model:
    return Model(id=body["id"], created=body["created"], owned_by=body["owned_by"])


def create_collection(name: str, model: str | None, dimension: int | None, metric: str,
                      index: str) -> Call[CollectionInfo]:
    body: dict[str, Any] = {"name": name, "metric": metric, "index": index}
    if model is not None:
        body["model"] = model
    if dimension is not None:
        body["dimension"] = dimension
    return Call("POST", "/v1/collections", collection_info, json=body)


def get_collection(name: str) -> Call[CollectionInfo]:
    return Call("GET", f"/v1/collections/{name}", collection_info)


def list_collections(cursor: str | None) -> Call[tuple[list[CollectionInfo], str | None]]:
    """One page of the caller's collections by name (the most a page holds) and the next page's cursor, if any."""
    params: dict[str, Any] = {"limit": MAX_PAGE}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/collections", lambda body: ([collection_info(c) for c in body["data"]],
                                                        body.get("next_cursor")), params=params)


def delete_collection(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/collections/{name}", lambda _: None)


def upsert(name: str, documents: list[dict[str, Any]]) -> Call[list[str]]:
    return Call("POST", f"/v1/collections/{name}/documents", lambda body: body["ids"],
                json={"documents": documents})


def get_document(name: str, doc_id: str, include_vector: bool) -> Call[Document]:
    params = {"include": "vector", "encoding_format": "base64"} if include_vector else None
    return Call("GET", _document_path(name, doc_id), document, params=params)


def get_documents(name: str, ids: list[str], include_vector: bool) -> Call[list[Document]]:
    body: dict[str, Any] = {"ids": ids}
    if include_vector:
        body.update(include=["vector"], encoding_format="base64")
    return Call("POST", f"/v1/collections/{name}/documents/get", lambda answer: [document(d) for d in answer["data"]],
                json=body)


def page(name: str, limit: int, cursor: str | None, filter: Filter | None) -> Call[Page]:
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    if filter is not None:
        params["filter"] = json.dumps(filter)
    return Call("GET", f"/v1/collections/{name}/documents",
                lambda body: Page([document(d) for d in body["data"]], body["next_cursor"], body["has_more"]),
                params=params)


def delete_document(name: str, doc_id: str) -> Call[None]:
    return Call("DELETE", _document_path(name, doc_id), lambda _: None)


def delete_documents(name: str, ids: list[str] | None, filter: Filter | None) -> Call[int]:
    body: dict[str, Any] = {}
    if ids is not None:
        body["ids"] = ids
    if filter is not None:
        body["filter"] = filter
    return Call("POST", f"/v1/collections/{name}/documents/delete", lambda answer: answer["deleted"], json=body)


def modes(mode: Mode, keyword: str | None, fusion: Mapping[str, Any] | None, explain: bool) -> dict[str, Any]:
    """The search fields of keyword and hybrid search, those that differ from the server's defaults."""
    options: dict[str, Any] = {} if mode == "dense" else {"mode": mode}
    if keyword is not None:
        options["keyword"] = keyword
    if fusion is not None:
        options["fusion"] = dict(fusion)
    if explain:
        options["explain"] = True
    return options


def search(name: str, field: str, value: Any, top_k: int, filter: Filter | None, include: Iterable[Include],
           min_score: float | None, options: dict[str, Any]) -> Call[list[list[Hit]]]:
    """One search, by ``field``: query, vector (already encoded), queries or vectors, with ``options`` (see
    ``modes``). The answer is a list of hit lists, one per query, whichever field."""
    include = list(include)
    body: dict[str, Any] = {field: value, "top_k": top_k, "include": include, **options}
    if filter is not None:
        body["filter"] = filter
    if min_score is not None:
        body["min_score"] = min_score
    if "vector" in include:
        body["encoding_format"] = "base64"
    single = field in ("query", "vector")
    return Call("POST", f"/v1/collections/{name}/search",
                lambda answer: [hits(answer["data"])] if single else [hits(h) for h in answer["data"]], json=body)


def query_batches(texts: Sequence[str] | None, vectors: np.ndarray | Sequence[VectorLike] | None,
                  top_k: int) -> tuple[str, list[list[Any]]]:
    """(the search field, its values in batches one search may take): at most MAX_QUERIES queries and
    MAX_SEARCH_HITS hits each."""
    if (texts is None) == (vectors is None):
        raise ValueError("give queries (texts) or vectors, not both")
    if texts is not None:
        field, values = "queries", list(texts)
    else:
        field, values = "vectors", vectors_out(vectors)  # type: ignore[arg-type]
    if not values:
        raise ValueError(f"{field} is empty")
    step = max(1, min(MAX_QUERIES, MAX_SEARCH_HITS // max(top_k, 1)))
    return field, [values[i:i + step] for i in range(0, len(values), step)]


def one_query(query: str | None, vector: VectorLike | None) -> tuple[str, Any]:
    if (query is None) == (vector is None):
        raise ValueError("give a query (text) or a vector, not both")
    return ("query", query) if query is not None else ("vector", vector_out(vector))  # type: ignore[arg-type]


def create_key(tenant: str) -> Call[ApiKey]:
    return Call("POST", "/v1/keys", api_key, json={"tenant": tenant})


def list_keys() -> Call[list[ApiKey]]:
    return Call("GET", "/v1/keys", lambda body: [api_key(k) for k in body["data"]])


def revoke_key(key_id: int) -> Call[None]:
    return Call("DELETE", f"/v1/keys/{int(key_id)}", lambda _: None)


def health() -> Call[dict[str, Any]]:
    return Call("GET", "/health", dict)


def ready() -> Call[dict[str, Any]]:
    return Call("GET", "/ready", dict, any_status=True)


def metrics() -> Call[str]:
    return Call("GET", "/metrics", str, text=True)
