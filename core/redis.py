"""One Redis client factory for the project (rate limits, job events, health checks).

The client is built from the cache's configuration (CACHE_URL): its LOCATION and its
OPTIONS (e.g. `socket_timeout`, `socket_connect_timeout`, `db`) are honoured, so every
part of the platform talks to the Redis the operator configured, the same way.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.conf import settings

# Options of Django's RedisCache that are not redis-py connection arguments.
_CACHE_ONLY_OPTIONS = {"parser_class", "pool_class", "serializer", "CLIENT_CLASS"}


def cache_is_redis() -> bool:
    """True when the default cache is Django's Redis backend (production)."""
    return settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"


def _location() -> str:
    location = settings.CACHES["default"]["LOCATION"]
    return location[0] if isinstance(location, (list, tuple)) else location


@lru_cache(maxsize=4)
def _client(location: str, options: tuple[tuple[str, Any], ...]):
    import redis

    return redis.Redis.from_url(location, **dict(options))


def redis_client(url: str | None = None, **options: Any):
    """A shared client (one connection pool per process and configuration).

    Without `url`: the cache's Redis with the cache's OPTIONS, or None when the cache
    is not Redis (the embedded default). With `url` (e.g. a Redis BROKER_URL): that
    server. `options` (redis-py keyword arguments such as `socket_timeout`) override."""
    if url is None:
        if not cache_is_redis():
            return None
        url = _location()
        cache_options = {
            k: v for k, v in (settings.CACHES["default"].get("OPTIONS") or {}).items() if k not in _CACHE_ONLY_OPTIONS
        }
        options = {**cache_options, **options}
    return _client(url, tuple(sorted(options.items())))
