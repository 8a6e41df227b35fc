"""Every error a client sees, in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

Domain errors (service/errors.py) get their status here and nowhere else; Litestar's own exceptions
(a body that does not decode or validate, an unknown route or method, a body too large) and a
database that cannot be reached are put in the same shape; anything else is a 500 whose details go
to the log only, never to the client.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from service.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from service.store.db import is_unavailable

log = logging.getLogger("service.errors")


class RateLimited(ServiceError):
    """Too many requests for this key (service/api/ratelimit.py): a 429 with Retry-After."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Most specific first: a subclass maps through its first listed ancestor.
_STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (InvalidRequest, 400), (Unauthenticated, 401), (Forbidden, 403), (NotFound, 404), (Conflict, 409),
    (RateLimited, 429), (Unavailable, 503),
)
# Litestar's exceptions by status: (type, code).
_HTTP_CODES = {
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
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]*)`")


def _error_type(status: int) -> str:
    return "server_error" if status >= 500 else "rate_limit_error" if status == 429 else "invalid_request_error"


def render(message: str, status: int, *, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> Response[Any]:
    body = {"error": {"message": message, "type": _error_type(status), "param": param, "code": code}}
    return Response(content=body, status_code=status, headers=headers or {})


def status_of(error: ServiceError) -> int:
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 500)


def render_service_error(error: ServiceError) -> Response[Any]:
    retry_after = getattr(error, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return render(error.message, status_of(error), param=error.param, code=error.code, headers=headers)


def _top_level(path: str) -> str | None:
    """OpenAI names the top-level field in ``param``; the message keeps the full path."""
    path = "" if path == "data" else path  # Litestar's name for the whole body
    return re.split(r"[.\[]", path)[0] or None


def _validation_error(exc: ValidationException) -> Response[Any]:
    """Litestar reports body errors as ``extra=[{"message": ..., "key": ...}]``; keep msgspec's words."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if isinstance(item, dict) and item.get("message"):
            message = str(item["message"])
            match = _PATH.search(message)
            path = (match.group(1) or match.group(2)) if match else str(item.get("key") or "")
            unknown = _UNKNOWN_FIELD.match(message)
            if unknown is not None:  # as OpenAI's "Unrecognized request argument supplied: filtr"
                field = unknown.group(1)
                return render(f"Unrecognized request argument supplied: {field} ({message}).", 400,
                              param=_top_level(path) or field, code="unknown_parameter")
            return render(message, 400, param=_top_level(path), code="invalid_request")
    detail = exc.detail or "invalid request"
    if "JSON" in detail or "decode" in detail.lower():
        detail = "We could not parse the JSON body of your request."
    return render(detail, 400, code="invalid_request")


def _http_error(exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        return _validation_error(exc)
    if status == 400:
        return render(exc.detail, 400, code="invalid_request")
    code = _HTTP_CODES.get(status, (None, None))[1]
    return render(exc.detail or "error", status, code=code, headers=dict(exc.headers or {}))


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, ServiceError):
        return render_service_error(exc)
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    if is_unavailable(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return render("The database is unavailable right now; retry shortly.", 503, code="database_unavailable",
                      headers={"Retry-After": "2"})
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return render("The server had an error while processing your request.", 500, code="internal_error")


exception_handlers = {Exception: handle_exception}
