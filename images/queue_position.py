"""A queued task's place in its model's queue (`queue_position` on the task object,
1 = next; issue 24), kept outside the database so that a poll costs no query.

One Redis sorted set per queue (the Redis of the job events: the broker's, else the
cache's): a job is added when it is enqueued (score: the enqueue time, so the order is
the queue's FIFO order) and removed when a worker claims it or it is settled
(images.task_status calls these). A position is one ZRANK, O(log n); an enqueue is a
ZADD plus a ZREMRANGEBYSCORE that drops entries older than a job's deadline (a job
cannot be queued that long), in one round trip; a settle is one ZREM per served queue.
Embedded (no Redis): an ordered dict per queue in this process.

A hint like the status snapshot: Redis away, the position is None and nothing fails.
Jobs of other tenants in the same queue count (they are ahead of you all the same).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_local: dict[str, dict[str, float]] = {}  # queue -> {job id: enqueue time}, in insertion order


def _redis():
    from core.redis import redis_client

    if settings.BROKER_URL.startswith("redis"):
        return redis_client(settings.BROKER_URL, socket_timeout=5, socket_connect_timeout=5)
    return redis_client()


def _key(queue: str) -> str:
    return f"platform:queue-order:{queue}"


def queue_order_key(queue: str) -> str:
    """The Redis sorted set of `queue`'s order, for a reader that sends its ZRANK in a
    pipeline with other reads (images.task_status.task_status_read_placed); a rank r
    there is position r + 1."""
    return _key(queue)


def queue_position_add(*, queue: str, job_id: Any) -> None:
    """The job joined `queue` now (idempotent: a second add keeps its first place)."""
    now = time.time()
    stale = now - int(settings.JOB_DEADLINE_SECONDS) - 60
    client = _redis()
    if client is not None:
        try:
            pipe = client.pipeline(transaction=False)
            pipe.zadd(_key(queue), {str(job_id): now}, nx=True)
            pipe.zremrangebyscore(_key(queue), "-inf", stale)
            pipe.execute()
        except Exception:
            logger.warning("could not record job %s in the order of queue %s", job_id, queue, exc_info=True)
        return
    with _lock:
        order = _local.setdefault(queue, {})
        order.setdefault(str(job_id), now)
        for job, at in list(order.items()):
            if at >= stale:
                break
            order.pop(job, None)


def queue_position_remove(*, job_id: Any, queues: list[str] | None = None) -> None:
    """The job left its queue (claimed or settled); `queues` default to every served one."""
    queues = list(queues or settings.GPU_QUEUES)
    client = _redis()
    if client is not None:
        try:
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.zrem(_key(queue), str(job_id))
            pipe.execute()
        except Exception:
            logger.warning("could not remove job %s from its queue's order", job_id, exc_info=True)
        return
    with _lock:
        for queue in queues:
            _local.get(queue, {}).pop(str(job_id), None)


def queue_position(*, queue: str, job_id: Any) -> int | None:
    """1 for the next job of `queue`, 2 for the one after...; None when the job is not
    in the queue's order (running, settled, or its entry lost)."""
    client = _redis()
    if client is not None:
        try:
            rank = client.zrank(_key(queue), str(job_id))
        except Exception:
            return None
        return None if rank is None else int(rank) + 1
    with _lock:
        order = _local.get(queue, {})
        if str(job_id) not in order:
            return None
        for index, job in enumerate(order):
            if job == str(job_id):
                return index + 1
    return None


def queue_order_clear(*, queue: str) -> None:
    """Forget the order of `queue` (its queued jobs then show no position until they are
    enqueued again). For tests, whose queued jobs vanish with their database, and for an
    operator who purged a queue by hand."""
    client = _redis()
    if client is not None:
        client.delete(_key(queue))
        return
    with _lock:
        _local.pop(queue, None)
