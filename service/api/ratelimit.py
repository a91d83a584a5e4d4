"""Request rate limits per API key (``FMNIST_RATE_LIMIT_PREDICT``, ``FMNIST_RATE_LIMIT_TRAIN``), checked by
``service.api.auth.require`` once the caller is known and allowed the scope.

What counts: against the predict limit, every request that needs the `predict` scope (predictions, reading
models and aliases, the predict figures), whoever makes it (an admin key too); against the train limit, only the
requests that create work: ``POST /v1/jobs``, ``/v1/sweeps`` and ``/v1/studies``. Reading jobs, following their
events and cancelling them are not limited. A key is counted by its id; with no keys configured (the open,
laptop mode), by the client's address. Past the limit: ``RateLimitExceeded`` (429, ``Retry-After`` and the IETF
draft's ``RateLimit-*`` fields).

The window moves (the ``limits`` library's moving window, in memory): at most N requests in any period of
the limit's length. A fixed window lets a client spend its quota at the end of one window and again at the
start of the next, twice the limit in a moment, which is the burst a limit is there to stop; it also counts
refused requests, so a client retrying in a loop would keep itself locked out. The moving window keeps one
timestamp per admitted request, at most the limit's amount per key, and a check takes microseconds. The counts
live in this process: behind several API replicas, each allows the limit.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import HTTPConnection

from service.errors import RateLimitExceeded
from service.settings import Settings

# The requests that create work, by path: POST to these counts against the train limit.
SUBMISSION_PATHS = frozenset({"/v1/jobs", "/v1/sweeps", "/v1/studies"})
LIMITED_SCOPES = ("predict", "train")
# What a 429 carries beside Retry-After (CORS exposes them to a page's scripts).
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


class RateLimits:
    """The configured limits, what each key (or address) has used of them, and how many requests they refused."""

    def __init__(self, settings: Settings) -> None:
        configured = {"predict": settings.rate_limit_predict, "train": settings.rate_limit_train}
        self.texts = {scope: text for scope, text in configured.items() if text}
        self._items: dict[str, RateLimitItem] = {scope: parse(text) for scope, text in self.texts.items()}
        # The storage starts a timer thread that drops expired entries: only when there is a limit to keep.
        self._limiter = MovingWindowRateLimiter(MemoryStorage()) if self._items else None
        self.refused: Counter[str] = Counter({scope: 0 for scope in LIMITED_SCOPES})  # for GET /metrics

    def check(self, scope: str, key_id: str | None, request: HTTPConnection) -> None:
        """Counts ``request`` against ``scope``'s limit for key ``key_id`` (None: the client's address); raises
        ``RateLimitExceeded`` when it is past the limit (the refused request is not counted)."""
        item = self._items.get(scope)
        if item is None or self._limiter is None or not counts_against(scope, request):
            return
        if key_id is not None:
            identity, caller = f"key:{key_id}", f"API key {key_id}"
        else:
            address = request.client.host if request.client is not None else "unknown"
            identity, caller = f"address:{address}", f"address {address}"
        if self._limiter.hit(item, scope, identity):
            return
        reset_at, _remaining = self._limiter.get_window_stats(item, scope, identity)
        self.refused[scope] += 1
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimitExceeded(scope, self.texts[scope], item.amount, caller, retry_after)


def counts_against(scope: str, request: HTTPConnection) -> bool:
    """Whether ``request`` counts against ``scope``'s limit: every predict request; only submissions for train."""
    if scope == "train":
        return request.scope.get("method") == "POST" and request.scope["path"] in SUBMISSION_PATHS
    return True
