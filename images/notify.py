"""Events from a job's worker to the web request waiting for it, never through the
database: "done" when the job's final state is committed, and "partial" previews
while it runs (streaming).

In-process (embedded) this is a list and a threading.Condition per job; with Redis
available (BROKER_URL or CACHE_URL) it is a Redis list per job (RPUSH / BLPOP), so a
web process on one machine hears a worker on another. Waiters always re-read the job
from the database: "done" is only a hint, and a lost one costs one poll interval.

Waiting without a thread (the ASGI server, core/waiting.py). Every event is also
PUBLISHed on the channel `platform:job-events:<id>` (images.task_status publishes its
snapshot changes on `platform:task-status-changed:<id>`). Each web process's event loop
has ONE `JobEventHub`: one redis.asyncio connection that PSUBSCRIBEs to both patterns
once, and hands each message to the asyncio queues of the requests waiting for that job
(`job_events`); no Redis command per waiting request. Embedded (no Redis), the
publisher's thread hands the event to the loop with call_soon_threadsafe. Events stay
hints: a waiter checks the job once after subscribing and again every
RECHECK_SECONDS (images.services.jobs.job_wait_async), so a lost message or a Redis
reconnect costs at most that long. The per-job lists stay for the blocking readers of
the WSGI (gthread) server. The pattern subscription means every web process receives
every job's events (a "done", a few status changes per step, and the previews of
streams): small next to what the waits save, and one subscription instead of one per
request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from django.conf import settings

EVENT_TTL = 120  # seconds an uncollected event is kept
EVENTS_PREFIX = "platform:job-events:"  # + job id: a list (RPUSH) and a channel (PUBLISH)
STATUS_PREFIX = "platform:task-status-changed:"  # + job id: images.task_status's channel

logger = logging.getLogger(__name__)

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
    return f"{EVENTS_PREFIX}{job_id}"


def job_event_publish(job_id: Any, event: dict[str, Any]) -> None:
    """Append an event to the job's channel (never raises: events are hints)."""
    job_id = str(job_id)
    client = _redis()
    if client is not None:
        try:
            pipe = client.pipeline()
            pipe.rpush(_key(job_id), json.dumps(event))
            pipe.expire(_key(job_id), EVENT_TTL)
            pipe.publish(_key(job_id), json.dumps(event))
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
    local_event_fire(job_id, "event", event)


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


# ---- Waiting without a thread (ASGI) -----------------------------------------------------

# Embedded: the hubs of this process's event loops, told of every event from any thread.
_listeners: list[Callable[[str, str, Any], None]] = []


def local_event_fire(job_id: str, kind: str, event: Any) -> None:
    """Embedded only: hand an event ("event": a job event; "status": a snapshot change,
    images.task_status) to every hub of this process. Never raises."""
    for listener in list(_listeners):
        try:
            listener(job_id, kind, event)
        except Exception:  # a closed loop: forget its hub
            try:
                _listeners.remove(listener)
            except ValueError:
                pass


def _redis_url() -> str | None:
    """The Redis the events go through (as `_redis`), None embedded."""
    from core.redis import _location, cache_is_redis

    if settings.BROKER_URL.startswith("redis"):
        return settings.BROKER_URL
    return _location() if cache_is_redis() else None


class JobEventHub:
    """The one subscriber of an event loop (one per web process): waiting requests
    register an asyncio.Queue per job and receive (kind, event) tuples: ("event",
    {"type": "done" | "partial", ...}) and ("status", None)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiters: dict[str, set[asyncio.Queue]] = {}
        self.ready = asyncio.Event()
        self.url = _redis_url()
        self.reader: asyncio.Task | None = None
        if self.url is None:
            _listeners.append(self._from_thread)
            self.ready.set()
        else:
            self.reader = loop.create_task(self._read())

    def _from_thread(self, job_id: str, kind: str, event: Any) -> None:
        if job_id in self.waiters:  # (a racy read is fine: a waiter registers before it checks)
            self.loop.call_soon_threadsafe(self._dispatch, job_id, kind, event)

    def _dispatch(self, job_id: str, kind: str, event: Any) -> None:
        for queue in self.waiters.get(job_id, ()):
            queue.put_nowait((kind, event))

    async def _read(self) -> None:
        """PSUBSCRIBE once; reconnect after a second on any error (the waiters' rechecks
        cover what was missed meanwhile)."""
        import redis.asyncio as aioredis

        while True:
            client = pubsub = None
            try:
                client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.psubscribe(EVENTS_PREFIX + "*", STATUS_PREFIX + "*")
                self.ready.set()
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"].decode()
                    if channel.startswith(EVENTS_PREFIX):
                        job_id = channel[len(EVENTS_PREFIX) :]
                        if job_id in self.waiters:
                            self._dispatch(job_id, "event", json.loads(message["data"]))
                    elif channel.startswith(STATUS_PREFIX):
                        self._dispatch(channel[len(STATUS_PREFIX) :], "status", None)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("job event subscriber: Redis failed; reconnecting", exc_info=True)
                self.ready.clear()
                await asyncio.sleep(1.0)
            finally:
                for closing in (pubsub, client):
                    if closing is not None:
                        try:
                            await closing.aclose()
                        except Exception:
                            pass


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JobEventHub] = weakref.WeakKeyDictionary()


def job_event_hub() -> JobEventHub:
    """The running loop's hub (made on first use)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = JobEventHub(loop)
    return hub


@asynccontextmanager
async def job_events(job_id: Any, *, ready_timeout: float = 2.0) -> AsyncIterator[asyncio.Queue]:
    """Receive the job's events while inside (a queue of (kind, event)). Entered once the
    subscription is live (or after `ready_timeout` s with Redis away): check the job
    after entering, so that nothing settled before is missed."""
    hub = job_event_hub()
    job_id = str(job_id)
    queue: asyncio.Queue = asyncio.Queue()
    hub.waiters.setdefault(job_id, set()).add(queue)
    try:
        if not hub.ready.is_set():
            try:
                await asyncio.wait_for(hub.ready.wait(), ready_timeout)
            except TimeoutError:
                pass
        yield queue
    finally:
        waiting = hub.waiters.get(job_id)
        if waiting is not None:
            waiting.discard(queue)
            if not waiting:
                hub.waiters.pop(job_id, None)
