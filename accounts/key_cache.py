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
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from core.redis import redis_client

logger = logging.getLogger(__name__)

PREFIX = "apikey:v1:"


def _redis_name(name: str) -> str:
    """The Redis key Django's cache would use for `name` (its KEY_PREFIX and version), so
    that `cache.clear()` and the cache's namespace cover these entries too."""
    return cache.make_key(name)


def _seconds() -> int:
    return int(getattr(settings, "API_KEY_CACHE_SECONDS", 10))


def api_key_cached(*, prefix: str) -> Any | None:
    """The cached key row (an APIKey with `tenant` loaded) for `prefix`, or None (not
    cached, caching off, or the cache unreachable: the caller reads the database)."""
    if _seconds() <= 0:
        return None
    try:
        client = redis_client()
        if client is None:
            return cache.get(PREFIX + prefix)
        raw = client.get(_redis_name(PREFIX + prefix))
        return pickle.loads(raw) if raw is not None else None
    except Exception:
        logger.warning("API key cache unreachable; reading the database", exc_info=True)
        return None


def api_key_cache_put(*, key: Any) -> None:
    """Cache a key row read from the database (its tenant loaded). Never raises."""
    seconds = _seconds()
    if seconds <= 0:
        return
    try:
        client = redis_client()
        if client is None:
            cache.set(PREFIX + key.prefix, key, seconds)
        else:
            client.set(_redis_name(PREFIX + key.prefix), pickle.dumps(key, pickle.HIGHEST_PROTOCOL), ex=seconds)
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
