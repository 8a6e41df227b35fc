"""VectorIndex snapshot files: single-file, atomic, checksummed storage of FAISS indexes plus metadata
and numpy arrays.

File layout (all integers little-endian)::

    b"VECINDEX"                      8-byte magic
    u64 header_len
    header                           UTF-8 JSON: {"format": 2, "meta": {...},
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

Format 2 has the layout of format 1; what differs is the contents (:meth:`Snapshot.take`,
:func:`restored`). Format 1 also held the tuning knobs, which are ignored; stored the empty main index
of an untrained index beside its training buffer; and labelled a tombstoned type's training buffer
with positions (see training.relabel_positions).

Writing is split in two so that a live index never waits for a disk: :class:`Snapshot` is everything a
file holds, copied in memory (private copies of the FAISS indexes), taken while the index is held
still; its :meth:`Snapshot.write` then does the slow part (streaming them out, hashing, the disk),
while the index goes on changing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import time
import uuid

import faiss
import numpy as np

from .training import relabel_positions
from .validation import check_path

MAGIC = b"VECINDEX"
END_MAGIC = b"VIDXEND\n"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
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


def copy_index(index) -> "faiss.Index":
    """A private deep copy of a FAISS index. ``faiss.clone_index`` copies the data structures directly:
    about 3x faster than ``faiss.serialize_index`` (which grows one buffer, reallocating, then copies it)
    and no larger than the index; FAISS releases the GIL meanwhile. Types its cloner does not know (e.g.
    the L2norm transform) are copied through serialization instead."""
    try:
        return faiss.clone_index(index)
    except RuntimeError:
        return faiss.deserialize_index(faiss.serialize_index(index))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything one index file holds, in memory: see VectorIndex.freeze.

    Attributes:
        meta: JSON-able metadata.
        arrays: numpy arrays (owned copies, never views of a live index).
        indexes: FAISS indexes by name: private copies (:func:`copy_index`), never the live ones.
    """

    meta: dict
    arrays: dict[str, np.ndarray]
    indexes: dict[str, "faiss.Index"]

    @classmethod
    def take(cls, index, position: int, tombstones: int, arrays: dict[str, np.ndarray],
             indexes: dict[str, "faiss.Index"]) -> "Snapshot":
        """A snapshot of a VectorIndex ``index`` (its dimension, metric and factory) made of its live
        FAISS ``indexes`` (copied here) and id mapping ``arrays`` (already copies). Its metadata is what
        :func:`restored` reads back; anything else there (format 1's knobs) is ignored."""
        meta = {
            "kind": "VectorIndex",
            "dimension": index.dimension,
            "metric": index.metric,
            "factory": index.factory,
            "position": position,
            "tombstones": tombstones,
            "faiss_version": faiss.__version__,
            "saved_at": time.time(),
        }
        return cls(meta, arrays, {name: copy_index(i) for name, i in indexes.items()})

    @property
    def position(self) -> int:
        return int(self.meta["position"])

    def write(self, path) -> None:
        """Atomically write the file at ``path`` (needs no lock: it reads only this snapshot)."""
        write_file(check_path(path), self.meta, self.arrays, self.indexes)


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a VectorIndex file holds besides dimension, metric and factory, for the constructor."""

    main: "faiss.Index | None"  # None while untrained (then it holds nothing)
    buffer: "faiss.Index | None"  # the training buffer's flat index while the main index is untrained
    arrays: dict[str, np.ndarray]  # the id mapping of whichever of the two holds the vectors
    tombstones: int


def restored(version: int, meta: dict, arrays: dict[str, np.ndarray], indexes: dict[str, "faiss.Index"]) -> Restored:
    """The parts of a VectorIndex file as :func:`read_file` returns them, format 1 translated (its tuning
    knobs are ignored). Raises CorruptIndexError, KeyError or ValueError for what does not fit."""
    if meta.get("kind") != "VectorIndex":
        raise CorruptIndexError("not a VectorIndex file")
    side = indexes.get("side")
    if version == 1 and side is not None and "int2ext" in arrays:
        # format 1 labelled a tombstoned type's training buffer with positions
        arrays = {"ids": relabel_positions(side, arrays["int2ext"])}
    # format 1 also stored the empty untrained main index: the constructor builds a fresh one instead
    return Restored(None if side is not None else indexes["main"], side, arrays, int(meta["tombstones"]))


def write_file(path, meta: dict, arrays: dict[str, np.ndarray], indexes: dict[str, "faiss.Index"]) -> None:
    """Atomically write ``path``. No other thread may change ``indexes`` meanwhile (Snapshot: copies)."""
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
                # Streamed: no second copy of the index in memory. The callback takes the GIL for each
                # block, and the file write and hashing it does release it again.
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


def read_file(path) -> tuple[int, dict, dict[str, np.ndarray], dict[str, "faiss.Index"]]:
    """Read a file written by :func:`write_file` (or by format 1); returns (format, meta, arrays, indexes)."""
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
            if header.get("format") not in READABLE_FORMATS:
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
    return header["format"], header["meta"], arrays, indexes
