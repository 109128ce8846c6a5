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
