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


# Counts one request in every bucket given (KEYS) and gives a new window's key its expiry
# (ARGV[1] seconds; the key names its window, so it only has to outlive it): one EVALSHA,
# about 20 us less client CPU than a pipeline of INCR and EXPIRE per bucket (issue 20: a
# task poll's rate-limit count).
_COUNT_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ARGV[1]) end
  counts[i] = n
end
return counts
"""
_count_script = None  # redis-py's Script (its SHA, loaded on the first NOSCRIPT), made once


def _count(client, names: list[str]) -> list[int]:
    global _count_script
    if _count_script is None:
        _count_script = client.register_script(_COUNT_SCRIPT)
    return [int(n) for n in _count_script(keys=names, args=[WINDOW + 5], client=client)]


def _count_all(buckets: list[str], now: float) -> tuple[list[int], int]:
    """Count one request in each bucket's current window: (counts, seconds to reset)."""
    window_start = int(now // WINDOW) * WINDOW
    keys = [f"rl:{bucket}:{window_start}" for bucket in buckets]
    reset = window_start + WINDOW - int(now)
    client = _redis()
    if client is not None:
        names = [cache.make_key(key) for key in keys]  # the names the cache API would use
        return _count(client, names), reset
    counts = []
    for key in keys:
        cache.add(key, 0, timeout=WINDOW + 5)
        try:
            counts.append(cache.incr(key))
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=WINDOW + 5)
            counts.append(1)
    return counts, reset


def rate_limit_check(*, caller, now: float | None = None) -> Window | None:
    """Count this request against the caller's own limit (a key's, or a dashboard
    member's), the limit of every key above a key (the keys that created it: a key's
    rpm bounds its whole subtree) and the tenant's, in one pipelined round trip; raise
    429 past any, naming whose limit it is. Marks the caller counted and
    stores the tightest window's headers on it. Calling it twice for one request
    counts once."""
    if caller.rate_counted:
        return None
    now = time.time() if now is None else now
    tenant = caller.tenant
    own_limit = (
        (caller.api_key.rpm_limit or settings.DEFAULT_KEY_RPM)
        if caller.api_key is not None
        else settings.DEFAULT_MEMBER_RPM
    )
    # (bucket, limit, who): the caller's own; each key above a key (its rpm, or the
    # installation default, is a ceiling for its whole subtree: the request counts in the
    # bucket that key's own requests count in); the tenant's.
    candidates = [(caller.identity, own_limit, "this API key" if caller.api_key is not None else "this member")]
    if caller.api_key is not None and caller.api_key.parent_id is not None:
        from accounts.selectors import key_lineage

        for ancestor in key_lineage(key=caller.api_key)[:-1]:
            candidates.append(
                (
                    f"k:{ancestor.prefix}",
                    ancestor.rpm_limit or settings.DEFAULT_KEY_RPM,
                    f"the API key '{ancestor.prefix}' that created this key (shared by every key it created)",
                )
            )
    candidates.append((f"t:{tenant.pk}", tenant.rpm_limit or settings.DEFAULT_TENANT_RPM, "this organization"))
    limits = [(bucket, limit, who) for bucket, limit, who in candidates if limit]
    caller.rate_counted = True
    if not limits:
        return None
    counts, reset = _count_all([bucket for bucket, _, _ in limits], now)
    tightest: Window | None = None
    for (_, limit, who), used in zip(limits, counts, strict=True):
        window = Window(limit=limit, remaining=max(0, limit - used), reset=max(1, reset))
        if used > limit:
            raise RateLimited(
                f"Rate limit reached: {limit} requests per minute for {who}. Retry in {window.reset} s.",
                headers={"Retry-After": str(window.reset), **ratelimit_headers(window)},
            )
        if tightest is None or window.remaining < tightest.remaining:
            tightest = window
    if tightest is not None:
        caller.ratelimit_headers = ratelimit_headers(tightest)
    return tightest


def ratelimit_headers(window: Window) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(window.limit),
        "x-ratelimit-remaining-requests": str(window.remaining),
        "x-ratelimit-reset-requests": f"{window.reset}s",
    }


class RequestRateThrottle(BaseThrottle):
    """DRF throttle: after authentication, counts the request of an API key or a
    signed-in dashboard member (`request.caller`, set by `caller_from_request`)."""

    def allow_request(self, request: Request, view) -> bool:
        caller = caller_from_request(request)
        if caller is None:
            return True
        rate_limit_check(caller=caller)
        request._request.ratelimit_headers = caller.ratelimit_headers
        return True


def caller_from_request(request: Request):
    """The request's Caller (built once and kept on the request): the API key's
    tenant, or the signed-in member's; None when neither."""
    from accounts.models import APIKey
    from accounts.principals import Caller, caller_for_member

    django_request = getattr(request, "_request", request)
    if hasattr(django_request, "caller"):
        return django_request.caller
    request_id = getattr(django_request, "request_id", "")
    key = getattr(request, "auth", None)
    if isinstance(key, APIKey):
        caller = Caller(tenant=key.tenant, api_key=key, request_id=request_id)
    else:
        caller = caller_for_member(user=getattr(request, "user", None), request_id=request_id)
    django_request.caller = caller
    if caller is not None:  # every later log line of this request says whose it is (core/logging.py)
        from core.logging import log_context_bind

        log_context_bind(tenant=caller.tenant.pk, key_prefix=caller.api_key.prefix if caller.api_key else None)
    return caller
