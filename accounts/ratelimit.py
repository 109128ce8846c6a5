"""Requests-per-minute limits per key and per tenant, shared by every web process
through the cache (Redis in production: INCR is atomic), in one-minute windows.

Every authenticated response carries OpenAI's x-ratelimit-*-requests headers for the
tightest limit; past it the answer is 429 `rate_limit_exceeded` with Retry-After.
Nothing has been priced or held at this point, so a refusal costs nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from core.errors import RateLimited

WINDOW = 60  # seconds


@dataclass(frozen=True)
class Window:
    limit: int
    remaining: int
    reset: int  # seconds until the window resets


def _redis():
    """The cache's Redis (one pipelined round trip counts every bucket); None when the
    cache is not Redis (the embedded default), which uses the cache API."""
    from core.redis import redis_client

    return redis_client()


def _count_all(buckets: list[str], now: float) -> tuple[list[int], int]:
    """Count one request in each bucket's current window: (counts, seconds to reset)."""
    window_start = int(now // WINDOW) * WINDOW
    keys = [f"rl:{bucket}:{window_start}" for bucket in buckets]
    reset = window_start + WINDOW - int(now)
    client = _redis()
    if client is not None:
        pipe = client.pipeline(transaction=False)
        for key in map(cache.make_key, keys):  # the names the cache API would use
            pipe.incr(key)
            pipe.expire(key, WINDOW + 5)  # the key names its window: it only has to outlive it
        replies = pipe.execute()
        return [int(replies[2 * i]) for i in range(len(keys))], reset
    counts = []
    for key in keys:
        cache.add(key, 0, timeout=WINDOW + 5)
        try:
            counts.append(cache.incr(key))
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=WINDOW + 5)
            counts.append(1)
    return counts, reset


def rate_limit_check(*, key, now: float | None = None) -> Window | None:
    """Count this request against the key's and the tenant's limits; raise 429 past either."""
    now = time.time() if now is None else now
    tenant = key.tenant
    limits = [(bucket, limit) for bucket, limit in (
        (f"k:{key.prefix}", key.rpm_limit or settings.DEFAULT_KEY_RPM),
        (f"t:{tenant.pk}", tenant.rpm_limit or settings.DEFAULT_TENANT_RPM)) if limit]
    if not limits:
        return None
    counts, reset = _count_all([bucket for bucket, _ in limits], now)
    tightest: Window | None = None
    for (bucket, limit), used in zip(limits, counts):
        window = Window(limit=limit, remaining=max(0, limit - used), reset=max(1, reset))
        if used > limit:
            raise RateLimited(
                f"Rate limit reached: {limit} requests per minute for this "
                f"{'API key' if bucket.startswith('k:') else 'organization'}. Retry in {window.reset} s.",
                headers={"Retry-After": str(window.reset), **ratelimit_headers(window)})
        if tightest is None or window.remaining < tightest.remaining:
            tightest = window
    return tightest


def ratelimit_headers(window: Window) -> dict[str, str]:
    return {"x-ratelimit-limit-requests": str(window.limit),
            "x-ratelimit-remaining-requests": str(window.remaining),
            "x-ratelimit-reset-requests": f"{window.reset}s"}


class RequestRateThrottle(BaseThrottle):
    """DRF throttle: runs after authentication on every API view with a key."""

    def allow_request(self, request: Request, view) -> bool:
        key = getattr(request, "auth", None)
        if key is None or not hasattr(key, "tenant"):
            return True
        window = rate_limit_check(key=key)
        if window is not None:
            request._request.ratelimit_headers = ratelimit_headers(window)
        return True
