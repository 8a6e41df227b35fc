"""Domain errors: what went wrong, in words a client can act on, and nothing about HTTP.

The domain, the engine and the store raise these; the HTTP layer alone (service/api/errors.py) turns
each into a status code and OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``.
``param`` names the request field at fault (the top-level one; the message has the full path) and
``code`` is the machine-readable reason.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ServiceError):
    """The request cannot be served as sent (a wrong value, a limit exceeded, an unknown field)."""

    code = "invalid_request"


class Unauthenticated(ServiceError):
    code = "invalid_api_key"


class Forbidden(ServiceError):
    """A valid key that may not do this (tenant keys on admin routes)."""

    code = "permission_denied"


class NotFound(ServiceError):
    code = "not_found"


class Conflict(ServiceError):
    code = "conflict"


class Unavailable(ServiceError):
    """The request was fine but cannot be served now: retry after ``retry_after`` seconds."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Overloaded(Unavailable):
    """A queue is full, or a request into the engine passed its deadline."""

    code = "overloaded"


class IndexGone(Unavailable):
    """The engine holds no index for this collection (another HTTP worker deleted it, say). The domain then
    looks the collection up again (service/domain/collections.py ``using``); only if the engine still has no
    index for what SQL holds does the client see this 503, retry, and hear what became of it."""

    code = "collection_changed"

    def __init__(self, collection_id: int) -> None:
        super().__init__(f"The collection changed while this request ran (index {collection_id} is no longer "
                         "served); retry.", retry_after=1)
        self.collection_id = collection_id
