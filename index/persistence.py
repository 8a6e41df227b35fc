"""Single-file, atomic, checksummed storage of FAISS indexes plus metadata and numpy arrays.

File layout (all integers little-endian)::

    b"VECINDEX"                      8-byte magic
    u64 header_len
    header                           UTF-8 JSON: {"format": 1, "meta": {...},
                                       "arrays": [{"name", "dtype", "shape", "nbytes"}, ...],
                                       "indexes": [name, ...]}
    array bytes                      each array's raw C-order bytes, in header order
    for each index:                  faiss.write_index output streamed through PyCallbackIOWriter,
      faiss bytes, u64 length        followed by its length (checked against what read_index consumed)
    sha256                           32 bytes: digest of everything above
    b"VIDXEND\\n"                    8-byte end magic

Saving writes a temporary file in the destination directory, flushes and fsyncs it, ``os.replace``-s it
over the destination and fsyncs the directory, so a crash leaves either the old or the new file (plus
possibly a stray ``.<name>.*.tmp`` file, which loading ignores). Loading first verifies the size, both
magics and the checksum, streaming the file, and only then parses it, so a truncated or corrupted file
raises :class:`CorruptIndexError` and never reaches the FAISS deserializer.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid

import faiss
import numpy as np

MAGIC = b"VECINDEX"
END_MAGIC = b"VIDXEND\n"
FORMAT_VERSION = 1
_U64 = struct.Struct("<Q")
_TRAILER = 32 + len(END_MAGIC)
_CHUNK = 8 << 20
_MAX_HEADER = 16 << 20


class CorruptIndexError(ValueError):
    """The index file is truncated, corrupted or not an index file; rebuild it from the source data."""


class _HashingWriter:
    def __init__(self, f):
        self._f = f
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._f.write(view)
        self.digest.update(view)
        self.count += view.nbytes
        return view.nbytes


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def temp_path_for(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")


def write_file(path, meta: dict, arrays: dict[str, np.ndarray], indexes: dict[str, "faiss.Index"]) -> None:
    """Atomically write ``path``."""
    path = os.path.abspath(os.fspath(path))
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    header = {
        "format": FORMAT_VERSION,
        "meta": meta,
        "arrays": [
            {"name": n, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": int(a.nbytes)}
            for n, a in arrays.items()
        ],
        "indexes": list(indexes),
    }
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    tmp = temp_path_for(path)
    try:
        with open(tmp, "xb") as f:
            w = _HashingWriter(f)
            w.write(MAGIC)
            w.write(_U64.pack(len(header_bytes)))
            w.write(header_bytes)
            for a in arrays.values():
                if a.nbytes:
                    w.write(a.reshape(-1).view(np.uint8))
            for index in indexes.values():
                before = w.count
                writer = faiss.PyCallbackIOWriter(w.write)
                faiss.write_index(index, writer)
                del writer  # flushes its buffer
                w.write(_U64.pack(w.count - before))
            f.write(w.digest.digest())
            f.write(END_MAGIC)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(os.path.dirname(path))


def _verify(f, size: int, path: str) -> None:
    if size < len(MAGIC) + _U64.size + _TRAILER:
        raise CorruptIndexError(f"{path}: file too short ({size} bytes) to be an index file")
    f.seek(0)
    if f.read(len(MAGIC)) != MAGIC:
        raise CorruptIndexError(f"{path}: not an index file (bad magic)")
    f.seek(size - _TRAILER)
    trailer = f.read(_TRAILER)
    if trailer[32:] != END_MAGIC:
        raise CorruptIndexError(f"{path}: truncated or incomplete index file (end marker missing)")
    digest = hashlib.sha256()
    f.seek(0)
    remaining = size - _TRAILER
    while remaining:
        block = f.read(min(_CHUNK, remaining))
        if not block:
            raise CorruptIndexError(f"{path}: file shrank while reading")
        digest.update(block)
        remaining -= len(block)
    if digest.digest() != trailer[:32]:
        raise CorruptIndexError(f"{path}: checksum mismatch (corrupted index file)")


class _BoundedReader:
    def __init__(self, f, limit: int):
        self._f = f
        self.remaining = limit
        self.count = 0

    def read(self, n: int) -> bytes:
        n = min(n, self.remaining)
        data = self._f.read(n)
        self.remaining -= len(data)
        self.count += len(data)
        return data


def read_file(path) -> tuple[dict, dict[str, np.ndarray], dict[str, "faiss.Index"]]:
    """Read a file written by :func:`write_file`; returns (meta, arrays, indexes)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        _verify(f, size, path)
        end = size - _TRAILER
        try:
            f.seek(len(MAGIC))
            (header_len,) = _U64.unpack(f.read(_U64.size))
            if header_len > min(_MAX_HEADER, end):
                raise CorruptIndexError(f"{path}: implausible header length {header_len}")
            header = json.loads(f.read(header_len).decode("utf-8"))
            if header.get("format") != FORMAT_VERSION:
                raise CorruptIndexError(f"{path}: unsupported index file format {header.get('format')!r}")
            arrays = {}
            for spec in header["arrays"]:
                nbytes = int(spec["nbytes"])
                if f.tell() + nbytes > end:
                    raise CorruptIndexError(f"{path}: array {spec['name']!r} runs past the end of the file")
                raw = f.read(nbytes)
                arrays[spec["name"]] = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
            indexes = {}
            for name in header["indexes"]:
                reader = _BoundedReader(f, end - f.tell())
                io_reader = faiss.PyCallbackIOReader(reader.read)
                index = faiss.read_index(io_reader)
                del io_reader
                (length,) = _U64.unpack(f.read(_U64.size))
                if length != reader.count:
                    raise CorruptIndexError(f"{path}: FAISS index {name!r} length mismatch")
                indexes[name] = index
            if f.tell() != end:
                raise CorruptIndexError(f"{path}: {end - f.tell()} unexpected bytes before the trailer")
        except CorruptIndexError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
            raise CorruptIndexError(f"{path}: cannot parse index file: {exc}") from exc
    return header["meta"], arrays, indexes
