"""Per-key rate limiting: a token bucket for each API key, checked right after authentication.

Each key may make ``EMBEDSEARCH_RATE_LIMIT_RPS`` requests per second on average and up to
``EMBEDSEARCH_RATE_LIMIT_BURST`` at once. Past that a request is refused with 429, a ``Retry-After``
header and OpenAI's ``rate_limit_exceeded`` error. The limiter is made by the app factory and owned
by the app; it remembers at most ``max_keys`` keys (least recently seen forgotten first; a forgotten
key starts again with a full bucket). Only authenticated requests reach it, so only real keys take
room. It runs as a Litestar guard: after the authentication middleware, before the body is read.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.api.errors import RateLimited
from service.settings import Settings
from service.store.keys import Principal

class RateLimiter:
    def __init__(
        self, rate: float, burst: float, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()  # key -> [tokens, last refill]

    @classmethod
    def from_settings(cls, settings: Settings, shares: int = 1) -> RateLimiter | None:
        """None when rate limiting is off (``rate_limit_rps`` 0 or inf). Burst 0 means one second's worth.
        ``shares``: the HTTP workers the rate is split across (each gets its share; the kernel spreads
        connections across them about evenly)."""
        if not 0 < settings.rate_limit_rps < math.inf:
            return None
        burst = settings.rate_limit_burst or math.ceil(settings.rate_limit_rps)
        return cls(settings.rate_limit_rps / shares, max(1, math.ceil(burst / shares)))

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> float:
        """Take a token for ``key``: 0.0 if there was one, else the seconds until there will be."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [self.burst, now]
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate

    async def guard(self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        """A Litestar guard: routes without a key (/health, /ready, /metrics, /docs) pass untouched."""
        principal = connection.scope.get("user")
        if not isinstance(principal, Principal):
            return
        wait = self.take(principal)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise RateLimited(
                f"Rate limit reached for this API key: {self.rate:g} requests per second "
                f"(bursts of {self.burst:g}). Retry after {retry_after} s.",
                retry_after=retry_after,
            )
