"""A queued or running task's status outside the database (issue 20): what a poll of
`GET /v1/images/tasks/{id}` reads while the job is not final, so that polling costs no
PostgreSQL query beyond the API key's.

One small snapshot per job: the task's fields as the task object shows them, the
tenant's id (a poll by another tenant is still a 404) and the steps done. It is written
when the job's state changes: `queued` by the web request after the job's transaction
commits (before its message is sent), `running` when a worker claims it, the steps done
as the pipeline runs (no database write: images.worker), and `final` by whoever settles
the job (images.services.jobs) after that commit. A final snapshot is a tombstone:
nothing written later (a progress write racing the settle) brings the job back, and a
poll of a final job reads the database, which is the truth for every final state.

Every write also wakes the long polls of the job (`?wait=N`: task_status_wait).

Where: a Redis hash per job (the Redis of the job events: the broker's, else CACHE_URL's) changed by one Lua script,
so each write is atomic against the tombstone; in-process (embedded, no Redis) a dict
and a Condition. A snapshot is a hint for polls only: missing, expired or unreadable
(Redis away), the poll reads the database as before. Money never depends on it, except
that a client's cancel charges the steps done recorded here when they are more than the
job row's (images.services.jobs.job_cancel).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from django.conf import settings

from images.queue_position import queue_order_key, queue_position_add, queue_position_remove

logger = logging.getLogger(__name__)

# Seconds a snapshot lives without a write: a job cannot outlive its deadline, and a
# tombstone only has to outlive the last late write of its worker.
FINAL_TTL = 300


def _ttl() -> int:
    return int(settings.JOB_DEADLINE_SECONDS) + 60


# KEYS[1] the snapshot, KEYS[2] the wake-up channel; ARGV[1] the mode, ARGV[2] the TTL,
# then field/value pairs (progress: steps_done and its value).
_SCRIPT = """
local key, mode = KEYS[1], ARGV[1]
if redis.call('HEXISTS', key, 'final') == 1 then return 0 end
if mode == 'final' then
  redis.call('DEL', key)
  redis.call('HSET', key, 'final', '1')
elseif mode == 'progress' then
  if redis.call('HEXISTS', key, 'status') == 0 then return 0 end
  local done = tonumber(ARGV[4])
  if done <= tonumber(redis.call('HGET', key, 'steps_done') or '0') then return 0 end
  redis.call('HSET', key, 'steps_done', ARGV[4])
  return redis.call('PUBLISH', KEYS[2], '1') + 1
else
  for i = 3, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', key, tonumber(ARGV[2]))
redis.call('PUBLISH', KEYS[2], '1')
return 1
"""

_cond = threading.Condition()
_local: dict[str, tuple[float, dict[str, Any]]] = {}  # job id -> (expires at, snapshot)


def _redis():
    """The Redis the job events use (images.notify): the broker's when the broker is
    Redis, else the cache's; None embedded."""
    from core.redis import redis_client

    if settings.BROKER_URL.startswith("redis"):
        return redis_client(settings.BROKER_URL, socket_timeout=5, socket_connect_timeout=5)
    return redis_client()


def task_status_shared() -> bool:
    """Whether web processes see what this process writes: Redis, or one process with
    its in-process worker (embedded). False for a separate worker without Redis (then
    the worker records progress in the database as well)."""
    if _redis() is not None:
        return True
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    return isinstance(dramatiq.get_broker(), StubBroker)


def _key(job_id: str) -> str:
    return f"platform:task-status:{job_id}"


def _channel(job_id: str) -> str:
    return f"platform:task-status-changed:{job_id}"


def _write(job_id: Any, mode: str, ttl: int, fields: dict[str, Any]) -> bool:
    """Apply one write (see _SCRIPT for the rules); never raises: a snapshot is a hint."""
    job_id = str(job_id)
    client = _redis()
    if client is not None:
        args: list[Any] = [mode, ttl]
        for name, value in fields.items():
            args += [name, value]
        try:
            return bool(client.eval(_SCRIPT, 2, _key(job_id), _channel(job_id), *args))
        except Exception:
            logger.warning("could not write the status snapshot of job %s", job_id, exc_info=True)
            return False
    with _cond:
        now = time.monotonic()
        for stale in [k for k, (expires, _) in _local.items() if expires < now]:
            _local.pop(stale, None)
        current = _local.get(job_id, (0.0, {}))[1]
        if current.get("final"):
            return False
        if mode == "final":
            current = {"final": "1"}
        elif mode == "progress":
            if "status" not in current or int(fields["steps_done"]) <= int(current.get("steps_done", 0)):
                return False
            current = {**current, "steps_done": str(fields["steps_done"])}
        else:
            current = {**current, **{name: str(value) for name, value in fields.items()}}
        _local[job_id] = (now + ttl, current)
        _cond.notify_all()
    from images.notify import local_event_fire

    local_event_fire(job_id, "status", None)  # the ASGI waits of this process (images.notify)
    return True


def task_status_set(*, job) -> bool:
    """Record a queued or running job (the row as the caller has it, `model` loaded):
    its task fields, tenant and steps done. No-op once the job is final."""
    from images.serializers import job_seeds

    fields = {
        "tenant": job.tenant_id,
        "status": job.status,
        "model": job.model.public_id,
        "kind": job.kind,
        "created_at": job.created_at.timestamp(),
        "started_at": job.started_at.timestamp() if job.started_at else "",
        "steps": job.steps,
        "steps_done": job.steps_done,
        "seeds": json.dumps(job_seeds(job)),
        "queue": job.model.queue,  # (queue_position: where the task waits)
    }
    # The queue's order (images.queue_position, issue 24): joined when queued, left when claimed.
    if job.status == "queued":
        queue_position_add(queue=job.model.queue, job_id=job.pk)
    else:
        queue_position_remove(job_id=job.pk, queues=[job.model.queue])
    return _write(job.pk, "set", _ttl(), fields)


def task_status_progress(*, job_id: Any, steps_done: int) -> bool:
    """Raise the job's steps done (never lowers them; nothing once final or unknown)."""
    return _write(job_id, "progress", _ttl(), {"steps_done": int(steps_done)})


def task_status_final(*, job_id: Any) -> None:
    """The job is settled: polls read the database from now on (a tombstone)."""
    _write(job_id, "final", FINAL_TTL, {})
    queue_position_remove(job_id=job_id)  # (settled while queued: cancelled, abandoned, swept)


def task_status_read(*, job_id: Any) -> dict[str, str]:
    """The job's snapshot as stored, fields as strings: {} when there is none (or Redis
    is away); {"final": "1"} once the job is settled. See task_status_live."""
    job_id = str(job_id)
    client = _redis()
    if client is not None:
        try:
            raw = client.hgetall(_key(job_id))
        except Exception:
            return {}
        return {k.decode(): v.decode() for k, v in raw.items()}
    with _cond:
        expires, snapshot = _local.get(job_id, (0.0, {}))
        return dict(snapshot) if expires >= time.monotonic() else {}


def task_status_read_placed(*, job_id: Any) -> tuple[dict[str, str], dict[str, int | None]]:
    """task_status_read and, in the same Redis round trip, the job's position in each
    served queue (GPU_QUEUES; images.queue_position: 1 = next, None = not in it), for a
    poll that shows a queued task's place without a second round trip:
    (snapshot, {queue: position}). Redis away: ({}, {}). Embedded: no positions (the
    caller reads its queue's)."""
    job_id = str(job_id)
    client = _redis()
    if client is None:
        return task_status_read(job_id=job_id), {}
    queues = list(settings.GPU_QUEUES)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(_key(job_id))
        for queue in queues:
            pipe.zrank(queue_order_key(queue), job_id)
        raw, *ranks = pipe.execute()
    except Exception:
        return {}, {}
    snapshot = {k.decode(): v.decode() for k, v in raw.items()}
    return snapshot, {queue: None if rank is None else int(rank) + 1 for queue, rank in zip(queues, ranks, strict=True)}


def task_status_live(snapshot: dict[str, str]) -> dict[str, str] | None:
    """The snapshot of a queued or running job, which a poll may answer from; None for
    none or a final one (then the database answers)."""
    if not snapshot or snapshot.get("final") or "status" not in snapshot:
        return None
    return snapshot


def task_status_steps_done(*, job_id: Any) -> int:
    """The steps done the snapshot records (0 when it has none)."""
    live = task_status_live(task_status_read(job_id=job_id))
    return int(live.get("steps_done") or 0) if live else 0


def task_status_wait(*, job_id: Any, seen: dict[str, str], timeout: float) -> None:
    """Block until the job's snapshot differs from `seen` (what task_status_read gave
    before: a write since, a new status, a step, the settle) or `timeout` seconds pass.
    The caller reads the task again after. Returns early if Redis fails (a short poll)."""
    job_id = str(job_id)
    deadline = time.monotonic() + timeout
    client = _redis()
    if client is not None:
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
        except Exception:
            return
        try:
            pubsub.subscribe(_channel(job_id))
            # Subscribed first, then compared: a write in between is not missed.
            while task_status_read(job_id=job_id) == seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if pubsub.get_message(timeout=min(remaining, 5.0)) is not None:
                    return
        except Exception:
            logger.warning("waiting for job %s's status failed", job_id, exc_info=True)
        finally:
            try:
                pubsub.close()
            except Exception:
                pass
        return
    with _cond:
        while task_status_read(job_id=job_id) == seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            _cond.wait(remaining)
