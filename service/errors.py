"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Services raise :class:`ApiError` (or a subclass); :func:`exception_handlers` turns it, Litestar's own
exceptions and anything unexpected into that shape, so no handler formats errors itself and no
stack trace or path ever reaches a client.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

log = logging.getLogger("service.errors")


class ApiError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ApiError):
    code = "invalid_request"


class AuthenticationError(ApiError):
    status_code = 401
    code = "invalid_api_key"


class PermissionDenied(ApiError):
    status_code = 403
    code = "permission_denied"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class Unavailable(ApiError):
    """The request was fine but cannot be served right now; the client should retry."""

    status_code = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


_STATUS_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_PATH = re.compile(r"at `\$\.?([^`]*)`|missing required field `([^`]*)`")


def _validation_message(exc: ValidationException) -> tuple[str, str | None]:
    """Litestar reports body errors as ``extra=[{"message": ..., "key": ...}]``; keep msgspec's words."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if isinstance(item, dict) and item.get("message"):
            message = str(item["message"])
            match = _PATH.search(message)
            path = (match.group(1) or match.group(2)) if match else str(item.get("key") or "")
            path = "" if path == "data" else path  # Litestar's name for the whole body
            # OpenAI names the top-level field in `param`; the message keeps the full path.
            return message, (re.split(r"[.\[]", path)[0] or None)
    detail = exc.detail or "invalid request"
    if "JSON" in detail or "decode" in detail.lower():
        return "We could not parse the JSON body of your request.", None
    return detail, None


def _from_http_exception(exc: HTTPException) -> ApiError:
    status = exc.status_code
    if isinstance(exc, ValidationException) or status == 400:
        message, param = _validation_message(exc) if isinstance(exc, ValidationException) else (exc.detail, None)
        return InvalidRequest(message, param=param)
    kind, code = _STATUS_CODES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    error = ApiError(exc.detail or "error", code=code, status_code=status, headers=dict(exc.headers or {}))
    error.type = kind
    return error


def _render(error: ApiError) -> Response[Any]:
    return Response(content=error.body(), status_code=error.status_code, headers=error.headers)


# SQLite errors that mean "busy or unreachable", not "wrong": see database_unavailable().
_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR")


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached or cannot serve right now (a 503, worth a
    retry) rather than that the query or the schema is wrong (a 500, a bug).

    * a disconnect SQLAlchemy noticed (``connection_invalidated``: the server went away mid-session);
    * a pool that could not hand out a connection in time (``sqlalchemy.exc.TimeoutError``);
    * psycopg's OperationalError: a failed connect (refused, reset, timed out), a server shutting
      down or starting up (SQLSTATE 57P0x), too many connections (53300), a lock or statement timeout;
    * SQLite busy/locked past its timeout, or a database file that cannot be opened or read;
    * the SQLite database file deleted, moved or replaced under the server (``DatabaseFileChanged``,
      service/store/db.py): unavailable until the same file is back at its path.
    """
    from sqlalchemy import exc as sa

    from service.store.db import DatabaseFileChanged

    if isinstance(exc, sa.TimeoutError):
        return True
    if not isinstance(exc, sa.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, DatabaseFileChanged):
        return True
    if type(orig).__module__.startswith("psycopg"):
        import psycopg

        return isinstance(orig, psycopg.OperationalError)
    name = getattr(orig, "sqlite_errorname", "")
    return isinstance(name, str) and name.startswith(_SQLITE_UNAVAILABLE)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, ApiError):
        return _render(exc)
    if isinstance(exc, HTTPException):
        return _render(_from_http_exception(exc))
    if database_unavailable(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return _render(Unavailable("The database is unavailable right now; retry shortly.", retry_after=2,
                                   code="database_unavailable"))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    error = ApiError("The server had an error while processing your request.", code="internal_error", status_code=500)
    error.type = "server_error"
    return _render(error)


exception_handlers = {Exception: handle_exception}
