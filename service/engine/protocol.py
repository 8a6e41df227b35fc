"""The frames between HTTP workers and the engine process: msgspec-msgpack, length-prefixed, on one socket.

Each call is a :class:`Call` (an id and one request: token ids in, a collection's query vectors in, a
committed write in...) and each answer a :class:`Reply` with the same id, holding a value or an
:class:`Error`. Arrays travel as raw bytes (float32 vectors, int64 seqs) with their dtype and shape,
so a batch of vectors costs one copy each way. A worker may send :class:`Cancel` for a call its
client gave up: the engine drops it (an embedding still queued never reaches a forward pass).

Domain errors cross as their class name and fields and are raised again on the worker's side, so the
HTTP layer answers exactly as it would in one process (a full encoder queue is still a 503 with
Retry-After). Nothing here is secret or trusted: a worker's frames are decoded into these types only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgspec
import numpy as np

from service import errors
from service.store.documents import CollectionRow

MAX_FRAME = 1 << 30  # bytes: past what any request the HTTP layer admits can produce
_LENGTH = struct.Struct("<I")


class Array(msgspec.Struct, array_like=True):
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def of(cls, array: np.ndarray) -> Array:
        array = np.ascontiguousarray(array)
        return cls(array.dtype.str, array.shape, array.tobytes())

    def numpy(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)


class Hello(msgspec.Struct, tag=True, array_like=True):
    """A worker's first frame: who it is (the engine counts its workers for readiness)."""

    pid: int


class Embed(msgspec.Struct, tag=True, array_like=True):
    model: str
    sequences: list[list[int]]
    key: str


class Search(msgspec.Struct, tag=True, array_like=True):
    collection: int
    queries: Array
    k: int
    filter: Any  # the filter as the client sent it (validated by the worker; parsed again here)


class KeywordSearch(msgspec.Struct, tag=True, array_like=True):
    collection: int
    queries: list[str]
    k: int
    filter: Any


class Apply(msgspec.Struct, tag=True, array_like=True):
    collection: int
    position: int
    removed: Array
    seqs: Array | None
    vectors: Array | None
    texts: list[str | None] | None
    metas: list[dict[str, Any]] | None  # the Milvus backend stores them; FAISS does not need them


class Open(msgspec.Struct, tag=True, array_like=True):
    row: CollectionRow


class Create(msgspec.Struct, tag=True, array_like=True):
    row: CollectionRow


class Drop(msgspec.Struct, tag=True, array_like=True):
    collection: int


class State(msgspec.Struct, tag=True, array_like=True):
    collection: int


class Indexed(msgspec.Struct, tag=True, array_like=True):
    collection: int


class Status(msgspec.Struct, tag=True, array_like=True):
    ready: bool = False  # the asking worker has every model ready (tokenizer loaded): it counts for /ready


class Cancel(msgspec.Struct, tag=True, array_like=True):
    call: int  # the id of the call to drop


Request = Hello | Embed | Search | KeywordSearch | Apply | Open | Create | Drop | State | Indexed | Status | Cancel


class Call(msgspec.Struct, array_like=True):
    id: int
    request: Request


class Error(msgspec.Struct, array_like=True):
    kind: str  # a class of service/errors.py, "ValueError" or "Internal"
    message: str
    param: str | None = None
    code: str | None = None
    retry_after: int | None = None


class Reply(msgspec.Struct, array_like=True):
    id: int
    value: Any = None
    error: Error | None = None


# -- what Status answers --------------------------------------------------------------------------
class ModelState(msgspec.Struct, array_like=True):
    status: str  # loading | ready | error
    created: int
    dimension: int = 0
    vocab_size: int = 0
    tokenizer: str = ""  # the path of its tokenizer.json, written by the engine once the model is loaded
    # the batcher's counters, for /metrics
    forward_passes: int = 0
    sequences: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    recent_batch_sizes: list[int] = []
    pending: int = 0
    capacity: int = 0


class IndexStats(msgspec.Struct, array_like=True):
    collection: int
    vectors: int
    snapshots: int
    hits: int
    updates: int
    misses: int


class EngineStatus(msgspec.Struct, array_like=True):
    started: float  # when this engine process started (a new one counts its batchers from zero)
    models: dict[str, ModelState]
    failed: list[int]
    indexes: list[IndexStats]
    workers: int  # HTTP workers connected now with every model ready


# -- errors across the boundary ---------------------------------------------------------------------
_SERVICE_ERRORS = {cls.__name__: cls for cls in (
    errors.InvalidRequest, errors.NotFound, errors.Conflict, errors.Unavailable, errors.Overloaded,
    errors.Forbidden, errors.Unauthenticated)}


def error_of(exc: BaseException) -> Error:
    if isinstance(exc, errors.IndexGone):
        return Error("IndexGone", exc.message, str(exc.collection_id))
    if isinstance(exc, errors.ServiceError):
        return Error(type(exc).__name__, exc.message, exc.param, exc.code, getattr(exc, "retry_after", None))
    if isinstance(exc, ValueError):
        return Error("ValueError", str(exc))
    return Error("Internal", f"{type(exc).__name__}: {exc}")


class EngineFailed(RuntimeError):
    """An error inside the engine process that is not the client's (logged there): a 500 here."""


def exception_of(error: Error) -> Exception:
    cls = _SERVICE_ERRORS.get(error.kind)
    if cls is not None:
        if issubclass(cls, errors.Unavailable):
            return cls(error.message, retry_after=error.retry_after or 1, code=error.code)
        return cls(error.message, param=error.param, code=error.code)
    if error.kind == "IndexGone":
        return errors.IndexGone(int(error.param or -1))
    if error.kind == "ValueError":
        return ValueError(error.message)
    return EngineFailed(error.message)


# -- framing ----------------------------------------------------------------------------------------
_encoder = msgspec.msgpack.Encoder()
call_decoder = msgspec.msgpack.Decoder(Call)
reply_decoder = msgspec.msgpack.Decoder(Reply)


def frame(message: msgspec.Struct) -> bytes:
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


def _socket_path(address: str) -> str:
    """The Unix socket to bind or connect to: ``@name`` is the abstract socket ``\\0name`` (Linux)."""
    return "\0" + address[1:] if address.startswith("@") else address


def listening_socket(address: str) -> socket.socket:
    """Bound and listening (made here: uvloop takes no abstract socket names as paths)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(_socket_path(address))
    sock.listen(1024)
    return sock


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, _socket_path(address))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One frame's body; IncompleteReadError at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes is past the limit")
    return await reader.readexactly(length)
