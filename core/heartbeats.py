"""Worker heartbeats: each worker process records where it runs and how it is doing
(core.models.WorkerHeartbeat); the admin overview and /metrics read them, and a worker
silent for WORKER_QUIET_SECONDS is shown as quiet. Torch-free: the worker passes in its
device and accelerator memory."""

from __future__ import annotations

import os
import resource
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from core.models import WorkerHeartbeat


def process_memory_bytes() -> int:
    """Resident memory of this process (Linux: /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def heartbeat_record(
    *,
    worker_id: str,
    host: str,
    pid: int,
    queues: list[str],
    device: str,
    started_at: datetime,
    jobs_running: int,
    jobs_done: int,
    device_memory_bytes: int = 0,
    now: datetime | None = None,
) -> WorkerHeartbeat:
    """Write this process's heartbeat (one row per worker process, updated in place)."""
    row, _ = WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id,
        defaults={
            "host": host[:150],
            "pid": pid,
            "queues": sorted(queues),
            "device": device[:100],
            "memory_bytes": process_memory_bytes(),
            "device_memory_bytes": device_memory_bytes,
            "jobs_running": jobs_running,
            "jobs_done": jobs_done,
            "started_at": started_at,
            "last_seen": now or timezone.now(),
        },
    )
    return row


def heartbeat_forget(*, worker_id: str) -> None:
    """A worker shutting down cleanly removes its row (it is not "quiet", it is gone)."""
    WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()


def worker_heartbeats(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every known worker process, newest first, with `quiet` (silent for
    WORKER_QUIET_SECONDS) and `silent_seconds`."""
    now = now or timezone.now()
    rows = []
    for row in WorkerHeartbeat.objects.order_by("host", "worker_id"):
        silent = max(0.0, (now - row.last_seen).total_seconds())
        rows.append(
            {
                "worker_id": row.worker_id,
                "host": row.host,
                "pid": row.pid,
                "queues": row.queues,
                "device": row.device,
                "memory_bytes": row.memory_bytes,
                "device_memory_bytes": row.device_memory_bytes,
                "jobs_running": row.jobs_running,
                "jobs_done": row.jobs_done,
                "started_at": row.started_at,
                "last_seen": row.last_seen,
                "silent_seconds": round(silent, 1),
                "quiet": silent > settings.WORKER_QUIET_SECONDS,
            }
        )
    return rows


def heartbeats_prune(*, before: datetime) -> int:
    """Delete heartbeats of workers silent since `before`; how many."""
    return WorkerHeartbeat.objects.filter(last_seen__lt=before).delete()[0]
