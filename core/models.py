from __future__ import annotations

from django.db import models


class IdempotencyRecord(models.Model):
    """An `Idempotency-Key` seen from one caller scope (Stripe's semantics, kept 24 hours).

    `scope` names who sent the key (a tenant: "tenant:<id>"), so two tenants may use the
    same key. `job_id` is the job the request created, if any (a plain UUID: this app
    depends on no other). A successful generation is replayed from its job (images
    re-read, links re-signed), so large bodies are never stored here; other answers are
    stored as they were sent."""

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"

    scope = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)  # sha256 of method, path and parsed body
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_PROGRESS)
    job_id = models.UUIDField(null=True, blank=True)
    # How the first request asked to be answered ("json" or "event-stream"): a replay answers the same way.
    mode = models.CharField(max_length=16, default="json")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="idempotency_scope_key_unique")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key} ({self.status})"


class WorkerHeartbeat(models.Model):
    """The latest heartbeat of one worker process (core/heartbeats.py): written every
    WORKER_HEARTBEAT_SECONDS by each Dramatiq process, read by the admin overview and
    /metrics. One silent for WORKER_QUIET_SECONDS has gone quiet; rows silent past the
    retention period are pruned."""

    worker_id = models.CharField(max_length=200, unique=True)  # "<host>:<pid>"
    host = models.CharField(max_length=150)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    device = models.CharField(max_length=100, blank=True, default="")  # "cuda: NVIDIA H200", "cpu"
    memory_bytes = models.BigIntegerField(default=0)  # resident memory of the process, bytes
    device_memory_bytes = models.BigIntegerField(default=0)  # accelerator memory allocated, bytes (0: none)
    jobs_running = models.PositiveIntegerField(default=0)
    jobs_done = models.BigIntegerField(default=0)  # messages this process finished since it started
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.worker_id
