"""The frames between HTTP workers and the engine process: msgspec-msgpack, length-prefixed, on one socket.

Each call is a :class:`Call` (an id and one request: token ids in, a collection's query vectors in, a
committed write in...) and each answer a :class:`Reply` with the same id, holding a value or an
:class:`Error`. Arrays travel as raw bytes (float32 vectors, int64 seqs) with their dtype and shape,
so a batch of vectors costs one copy each way. A worker may send :class:`Cancel` for a call its
client gave up: the engine drops it (an embedding still queued never reaches a forward pass).

Domain errors cross as their class name and fields and are raised again on the worker's side, so the
HTTP layer answers exactly as it would in one process (a full encoder queue is still a 503 with
Retry-After).

Who may talk: a connection is the engine's only once its peer has shown it runs as the engine's own
user (``SO_PEERCRED``, Linux) and, before any frame, sent the secret the supervisor gave the engine and
its workers for this start (through an inherited pipe: see service/supervisor.py). Even then a
worker's frames are decoded into these types only, and the engine checks each one against the limits
the HTTP layer documents (service/engine/checks.py). A frame names collections by id and carries no
write's content: the engine reads what was committed from SQL itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any

import msgspec
import numpy as np

from service import errors

MAX_FRAME = 1 << 30  # bytes of a reply (the engine's own answers)
MAX_CALL_FRAME = 128 << 20  # bytes of a call: past what any request the HTTP layer admits can produce
_LENGTH = struct.Struct("<I")
SECRET_BYTES = 32
GREETING = b"embedsearch-engine/1\n"  # then the secret: a worker's first bytes on a new connection


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
    """A worker's first frame after the greeting: who it is (the engine counts its workers for readiness)."""

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
    """SQL has committed a write to this collection up to ``position``: the engine catches its index up with SQL."""

    collection: int
    position: int


class Open(msgspec.Struct, tag=True, array_like=True):
    collection: int


class Create(msgspec.Struct, tag=True, array_like=True):
    collection: int


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


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> bytes:
    """One frame's body; IncompleteReadError at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > limit:
        raise ValueError(f"a frame of {length} bytes is past the limit")
    return await reader.readexactly(length)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``; None where there is none)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def read_secret(fd: int) -> bytes:
    """The per-start secret from the pipe the supervisor handed this process (``--secret-fd``); the fd is closed."""
    with os.fdopen(fd, "rb") as pipe:
        secret = pipe.read(SECRET_BYTES + 1)
    if len(secret) != SECRET_BYTES:
        raise SystemExit(f"the engine secret from fd {fd} has {len(secret)} bytes, not {SECRET_BYTES}")
    return secret
