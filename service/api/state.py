"""What a handler reaches through its request: the services the app factory built, and the caller.

Handlers take ``request`` and read these, rather than having Litestar inject them as dependencies: each
injected dependency costs every request a resolution (and several a task group), a tenth of the
cheapest request's time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Request

from service.store.keys import Principal

if TYPE_CHECKING:
    from service.api.app import Services


def services(request: Request) -> Services:
    return request.app.state.services


def caller(request: Request) -> Principal:
    """The key's principal (set by service/api/auth.py)."""
    return request.user
