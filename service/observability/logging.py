"""Logs: readable text for people (default) or one JSON object per line (``EMBEDSEARCH_LOG_FORMAT=json``).

Each request gets an id (the client's ``X-Request-ID`` when it sends a usable one, else a new one),
kept in the :data:`request_id` context variable while the request runs, so that every log line
written on its behalf, the access log line included, carries it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

# The id of the request being served in this context (None outside requests). A context variable
# holds no shared state: each request's task sees its own value.
request_id: ContextVar[str | None] = ContextVar("embedsearch_request_id", default=None)

MAX_REQUEST_ID = 128
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._~:/+=@-]")

LOG_FORMATS = ("text", "json")


_ID_PREFIX = os.urandom(8).hex()  # this process's, random: ids from different processes and runs differ
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """32 hex digits, unique: this process's random half, then a counter (no system call per request)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def sanitise_request_id(raw: str | None) -> str:
    """Keep a client's id if anything printable and safe is left of it (at most 128 characters)."""
    if raw:
        clean = _NOT_ALLOWED.sub("", raw[: 4 * MAX_REQUEST_ID])[:MAX_REQUEST_ID]
        if clean:
            return clean
    return new_request_id()


# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into JSON.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message",  # color_message: uvicorn's coloured duplicate
    "request_id",  # written explicitly, and only when there is one
}


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` from the context, in the thread and task that logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            rid = request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "process"?, "request_id"?, ...extra fields, "exception"?}`` on one
    line (``process``: ``engine``, ``worker 2``, where there are several)."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process:
            out["process"] = self.process
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: control characters, line separators and lone surrogates all come out escaped.
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``12:00:01 INFO    service.access: POST /v1/embeddings 200 3.1 ms [req 5f0c...]``, with the process's
    name after the level where there are several (``engine``, ``worker 2``)."""

    def __init__(self, process: str = "") -> None:
        tag = f"[{process}] " if process else ""
        super().__init__(f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None) or request_id.get()
        if not rid:
            return text
        first, newline, rest = text.partition("\n")  # keep a traceback below the tagged line
        return f"{first} [req {rid}]{newline}{rest}"


def make_handler(fmt: str, stream: Any = None, process: str = "") -> logging.Handler:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter(process))
    handler.addFilter(RequestIdFilter())
    return handler


# Libraries' start-up chatter, shown only at DEBUG: FAISS's probing of optional CPU builds (a
# ModuleNotFoundError logged twice a process), alembic's plugin set-up (seven lines a process) and its
# migration steps (service/store/migrate.py says in one line when a schema was upgraded).
QUIET_LOGGERS = ("faiss.loader", "alembic.runtime.plugins", "alembic.runtime.migration")
# uvicorn's start-up steps (three lines a worker): the CLI logs one line once the app serves instead.
UVICORN_START_MESSAGES = ("Started server process [%d]", "Waiting for application startup.",
                          "Application startup complete.")


class Demote(logging.Filter):
    """A logger's INFO records with one of ``messages`` (the format string) become DEBUG records."""

    def __init__(self, messages: tuple[str, ...]) -> None:
        super().__init__()
        self.messages = frozenset(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.msg not in self.messages:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_QUIET_UVICORN_START = Demote(UVICORN_START_MESSAGES)


def setup_logging(level: str, fmt: str = "text", process: str = "") -> None:
    """Send every log record (uvicorn's too) to stderr in the chosen format, tagged with ``process``. For the
    CLI only."""
    logging.basicConfig(level=level.upper(), handlers=[make_handler(fmt, process=process)], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    logging.getLogger("uvicorn.error").addFilter(_QUIET_UVICORN_START)  # once: a filter is added only once


def disable_progress_bars() -> None:
    """Turn tqdm's progress bars (model conversion and loading) off, so stderr holds only JSON lines.

    tqdm reads ``TQDM_*`` variables when it is first imported: call this before importing torch & co."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
