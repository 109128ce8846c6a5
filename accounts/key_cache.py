"""API keys read from the cache (CACHE_URL: Redis in production) instead of PostgreSQL
on every request (issue 20: a task poll costs no database query).

What is cached: the key's row with its tenant (as `APIKeyAuthentication` loads it), under
`apikey:v1:<prefix>`, for API_KEY_CACHE_SECONDS (default 10). With a Redis cache the row
is pickled through the project's shared client (core.redis: Django's RedisCache builds a
new client object per call, ~1.7 ms here), under the key Django's cache would use. The secret is still checked
against the cached hash on every request, so the cache never lets a wrong secret in; a
prefix that matches no key is never cached (a typo is a database read, as before).

Staleness, and where the rule comes from. Every save or delete of a key or of a tenant
drops the cached rows at once (`post_save`/`post_delete` receivers below, connected in
AccountsConfig.ready; a tenant's change drops all its keys), and so does the one bulk
`update()` of keys (the children revoked by accounts.services.api_key_revoke): a revoked
key, a suspended tenant, a new rate limit or model list take effect on the next request
in every web process sharing the Redis cache. Two cases fall back to the TTL: a request
that read the row just before the change and writes it to the cache just after (a
race of a few milliseconds), and a per-process cache (`locmemcache://`, the embedded
default) in another process than the one that made the change. Either way the change
takes effect within API_KEY_CACHE_SECONDS. Money never depends on it: holds, budgets and
balances lock their own rows (billing.services).

Refreshed before it expires. A row older than half its lifetime is "due"
(`api_key_cache_refresh_due`): the next request through Django's authentication reads the
database and caches the row again, while every other request keeps the cached row. Without
it, every request in flight when the row expired went to the database at once, and
images.task_poll's short polls, which answer only from a cached row, all fell back to Django
until one of them had cached it again (about a quarter of 1,000 pollers' polls, at four
times the CPU: issue 20). The short poll that finds its row due claims the refresh once
(`api_key_cache_refresh_claim`: SET NX for a few seconds) and hands that one request to
Django; the others answer from the row, which is never older than API_KEY_CACHE_SECONDS
either way.
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from core.redis import redis_client

logger = logging.getLogger(__name__)

PREFIX = "apikey:v2:"  # (v2: the row with the time it was cached)
REFRESH_SUFFIX = ":refresh"


def _redis_name(name: str) -> str:
    """The Redis key Django's cache would use for `name` (its KEY_PREFIX and version), so
    that `cache.clear()` and the cache's namespace cover these entries too."""
    return cache.make_key(name)


def _seconds() -> int:
    return int(getattr(settings, "API_KEY_CACHE_SECONDS", 10))


def api_key_cached(*, prefix: str) -> Any | None:
    """The cached key row (an APIKey with `tenant` loaded) for `prefix`, or None (not
    cached, caching off, or the cache unreachable: the caller reads the database). The
    row carries `cached_at` (time.time() when it was cached) for api_key_cache_refresh_due."""
    if _seconds() <= 0:
        return None
    try:
        client = redis_client()
        if client is None:
            entry = cache.get(PREFIX + prefix)
        else:
            raw = client.get(_redis_name(PREFIX + prefix))
            entry = pickle.loads(raw) if raw is not None else None
    except Exception:
        logger.warning("API key cache unreachable; reading the database", exc_info=True)
        return None
    if not isinstance(entry, tuple) or len(entry) != 2:
        return None
    cached_at, key = entry
    key.cached_at = cached_at
    return key


def api_key_cache_refresh_due(key: Any, *, now: float | None = None) -> bool:
    """Whether a cached row (from api_key_cached) is older than half API_KEY_CACHE_SECONDS,
    so that it is read from the database again before it expires (module docstring)."""
    cached_at = getattr(key, "cached_at", None)
    if cached_at is None:
        return False
    return (time.time() if now is None else now) - cached_at > _seconds() / 2


def api_key_cache_refresh_claim(*, prefix: str) -> bool:
    """Claim the refresh of a due row for this caller: True for one caller per few
    seconds across every process sharing the cache (a Redis SET NX, or cache.add), which
    then lets Django's authentication read the database; False for the others, and when
    the cache is unreachable (they keep the cached row, as valid as before). Never raises."""
    name = PREFIX + prefix + REFRESH_SUFFIX
    seconds = max(1, _seconds() // 2)
    try:
        client = redis_client()
        if client is None:
            return bool(cache.add(name, 1, seconds))
        return bool(client.set(_redis_name(name), b"1", nx=True, ex=seconds))
    except Exception:
        logger.warning("API key cache unreachable; keeping the cached row of %s", prefix, exc_info=True)
        return False


def api_key_cache_put(*, key: Any, cached_at: float | None = None) -> None:
    """Cache a key row read from the database (its tenant loaded), stamped with
    `cached_at` (time.time() of the read; default now). Never raises."""
    seconds = _seconds()
    if seconds <= 0:
        return
    entry = (time.time() if cached_at is None else cached_at, key)
    try:
        client = redis_client()
        if client is None:
            cache.set(PREFIX + key.prefix, entry, seconds)
        else:
            client.set(_redis_name(PREFIX + key.prefix), pickle.dumps(entry, pickle.HIGHEST_PROTOCOL), ex=seconds)
    except Exception:
        logger.warning("could not cache API key %s", key.prefix, exc_info=True)


def api_key_cache_forget(*, prefixes: list[str]) -> None:
    """Drop the cached rows of these keys (after a change to them), now and again when
    the surrounding transaction commits (a request may have cached the old row in
    between). Never raises."""
    if not prefixes:
        return
    names = [PREFIX + prefix for prefix in prefixes]

    def forget() -> None:
        try:
            client = redis_client()
            if client is None:
                cache.delete_many(names)
            else:
                client.delete(*[_redis_name(name) for name in names])
        except Exception:
            logger.warning("could not drop cached API keys %s", prefixes, exc_info=True)

    forget()
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(forget)


def _key_changed(sender, instance, **kwargs) -> None:
    api_key_cache_forget(prefixes=[instance.prefix])


def _tenant_changed(sender, instance, **kwargs) -> None:
    from accounts.models import APIKey

    if instance.pk is None:
        return
    api_key_cache_forget(prefixes=list(APIKey.objects.filter(tenant_id=instance.pk).values_list("prefix", flat=True)))


def api_key_cache_connect() -> None:
    """Connect the receivers that drop cached rows when a key or tenant is saved or deleted."""
    from django.db.models.signals import post_delete, post_save

    from accounts.models import APIKey, Tenant

    for signal in (post_save, post_delete):
        signal.connect(_key_changed, sender=APIKey, dispatch_uid=f"api_key_cache_key_{signal is post_save}")
        signal.connect(_tenant_changed, sender=Tenant, dispatch_uid=f"api_key_cache_tenant_{signal is post_save}")
