"""Events from a job's worker to the web request waiting for it, never through the
database: "done" when the job's final state is committed, and "partial" previews
while it runs (streaming).

In-process (embedded) this is a list and a threading.Condition per job; with Redis
available (BROKER_URL or CACHE_URL) it is a Redis list per job (RPUSH / BLPOP), so a
web process on one machine hears a worker on another. Waiters always re-read the job
from the database: "done" is only a hint, and a lost one costs one poll interval.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from django.conf import settings

EVENT_TTL = 120  # seconds an uncollected event is kept

_cond = threading.Condition()
_events: dict[str, tuple[float, list[dict[str, Any]]]] = {}


def _redis():
    """The broker's Redis when the broker is Redis, else the cache's (None embedded).
    No socket timeout: BLPOP waits block on purpose."""
    from core.redis import redis_client

    if settings.BROKER_URL.startswith("redis"):
        return redis_client(settings.BROKER_URL, socket_timeout=None, socket_connect_timeout=5)
    return redis_client(socket_timeout=None, socket_connect_timeout=5)


def _key(job_id: str) -> str:
    return f"platform:job-events:{job_id}"


def job_event_publish(job_id: Any, event: dict[str, Any]) -> None:
    """Append an event to the job's channel (never raises: events are hints)."""
    job_id = str(job_id)
    client = _redis()
    if client is not None:
        try:
            pipe = client.pipeline()
            pipe.rpush(_key(job_id), json.dumps(event))
            pipe.expire(_key(job_id), EVENT_TTL)
            pipe.execute()
        except Exception:
            pass
        return
    with _cond:
        now = time.monotonic()
        for stale in [k for k, (t, _) in _events.items() if now - t > EVENT_TTL]:
            _events.pop(stale, None)
        _events.setdefault(job_id, (now, []))[1].append(event)
        _cond.notify_all()


def job_event_next(job_id: Any, timeout: float) -> dict[str, Any] | None:
    """The job's next event, waiting up to `timeout` seconds; None if none came."""
    job_id = str(job_id)
    client = _redis()
    if client is not None:
        try:
            item = client.blpop([_key(job_id)], timeout=max(0.01, timeout))
        except Exception:
            time.sleep(min(timeout, 0.5))
            return None
        return json.loads(item[1]) if item else None
    deadline = time.monotonic() + timeout
    with _cond:
        while not _events.get(job_id, (0, []))[1]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            _cond.wait(remaining)
        return _events[job_id][1].pop(0)


def job_notify(job_id: Any) -> None:
    job_event_publish(job_id, {"type": "done"})


def job_wait_signal(job_id: Any, timeout: float) -> bool:
    """Block up to `timeout` seconds for the job's "done" event (previews are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        event = job_event_next(job_id, max(0.0, deadline - time.monotonic()))
        if event is None:
            return False
        if event.get("type") == "done":
            return True
