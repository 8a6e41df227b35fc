"""The client's exceptions: one class per kind of failure, each API error carrying the server's OpenAI-shape
error (``{"message", "type", "param", "code"}``). Named as the ``openai`` package names its own."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "EmbedsearchError", "APIConnectionError", "APITimeoutError", "APIStatusError", "BadRequestError",
    "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError", "RequestTooLargeError",
    "RateLimitError", "InternalServerError", "ServiceUnavailableError",
]


class EmbedsearchError(Exception):
    """Every error this package raises."""


class APIConnectionError(EmbedsearchError):
    """No answer came back: the server could not be reached, or the connection broke."""

    def __init__(self, message: str, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class APIStatusError(EmbedsearchError):
    """The server answered with an error status. ``error`` is its body's ``error`` object."""

    status_code: int

    def __init__(self, response: httpx.Response, body: Any) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):  # not this server's shape (a proxy in the way, say)
            error = {"message": response.text[:500] or response.reason_phrase, "type": None, "param": None,
                     "code": None}
        self.response = response
        self.status_code = response.status_code
        self.body = body
        self.error: dict[str, Any] = error
        self.message: str = str(error.get("message"))
        self.type: str | None = error.get("type")
        self.param: str | None = error.get("param")
        self.code: str | None = error.get("code")
        self.request_id: str | None = response.headers.get("x-request-id")
        super().__init__(f"{self.status_code} {self.code or self.type or 'error'}: {self.message}")


class BadRequestError(APIStatusError):
    """400: the request is invalid; ``param`` names the field at fault."""


class AuthenticationError(APIStatusError):
    """401: no API key, or one the server does not know."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this (admin routes)."""


class NotFoundError(APIStatusError):
    """404: no such collection, document or model (for this key's tenant)."""


class ConflictError(APIStatusError):
    """409: the collection exists already."""


class RequestTooLargeError(APIStatusError):
    """413: the body is over the server's limit."""


class RateLimitError(APIStatusError):
    """429: too many requests for this key (retried first, as Retry-After says)."""


class InternalServerError(APIStatusError):
    """5xx."""


class ServiceUnavailableError(InternalServerError):
    """503: the server is overloaded, loading a model, or a part of it is down (retried first)."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 413: RequestTooLargeError, 429: RateLimitError, 503: ServiceUnavailableError,
}


def from_response(response: httpx.Response) -> APIStatusError:
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    kind = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return kind(response, body)
