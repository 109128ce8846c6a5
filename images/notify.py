"""Wake the web request that waits for a job, without polling the database hard.

The worker calls job_notify(job_id) after the job's final state is committed; the
waiting request blocks in job_wait_signal(). In-process (embedded) this is a
threading.Condition; with Redis available (BROKER_URL or CACHE_URL) it is a Redis
list per job (BLPOP), so a web process on one machine hears a worker on another.
Callers always re-read the job from the database: a signal is only a hint, and a
lost one costs at most one poll interval.
"""
from __future__ import annotations

import threading
import time
from functools import lru_cache

from django.conf import settings

_cond = threading.Condition()
_done: dict[str, float] = {}


@lru_cache(maxsize=1)
def _redis():
    url = settings.BROKER_URL if settings.BROKER_URL.startswith("redis") else ""
    if not url:
        location = settings.CACHES["default"].get("LOCATION", "")
        location = location[0] if isinstance(location, list) else location
        url = location if isinstance(location, str) and location.startswith("redis") else ""
    if not url:
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=5)


def _key(job_id: str) -> str:
    return f"platform:job-done:{job_id}"


def job_notify(job_id: str) -> None:
    job_id = str(job_id)
    with _cond:
        _done[job_id] = time.monotonic()
        # Forget signals nobody collected after a minute.
        for stale in [k for k, t in _done.items() if time.monotonic() - t > 60]:
            _done.pop(stale, None)
        _cond.notify_all()
    client = _redis()
    if client is not None:
        try:
            pipe = client.pipeline()
            pipe.rpush(_key(job_id), 1)
            pipe.expire(_key(job_id), 120)
            pipe.execute()
        except Exception:  # a lost signal only delays the waiter to its next poll
            pass


def job_wait_signal(job_id: str, timeout: float) -> bool:
    """Block up to `timeout` seconds for a notification; True if one came."""
    job_id = str(job_id)
    client = _redis()
    if client is not None:
        try:
            return client.blpop([_key(job_id)], timeout=max(0.01, timeout)) is not None
        except Exception:
            time.sleep(min(timeout, 0.5))
            return False
    deadline = time.monotonic() + timeout
    with _cond:
        while job_id not in _done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _cond.wait(remaining)
        _done.pop(job_id, None)
        return True
