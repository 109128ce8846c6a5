"""Idempotency-Key handling (Stripe's semantics) for endpoints that charge.

- first request with a key: recorded as in progress, linked to its job in the job's
  own transaction, and completed with its answer;
- the same key and the same body within 24 h: the stored answer, charging nothing;
- the same key with a different body: 400 `idempotency_key_reused`;
- the same key while the first is still running: 409 (the SDK retries 409 with backoff).
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import APIError, InvalidRequest
from core.models import IdempotencyRecord

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


class IdempotencyConflict(APIError):
    status_code = 409
    type = "invalid_request_error"
    code = "idempotency_request_in_progress"


def request_fingerprint(*, method: str, path: str, data: Any, files: Any = None) -> str:
    """A hash of the parsed request, stable across retries (multipart boundaries differ)."""
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    if hasattr(data, "lists"):
        data = {k: v if len(v) > 1 else v[0] for k, v in data.lists()}
    digest.update(json.dumps(data, sort_keys=True, default=str).encode())
    for name, upload in sorted((files or {}).items()) if hasattr(files, "items") else []:
        for item in files.getlist(name) if hasattr(files, "getlist") else [upload]:
            # Each part framed by its name and byte length, so bytes cannot move
            # from one part into the next and hash the same.
            digest.update(f"\n{name}:{item.size}\n".encode())
            for chunk in item.chunks():
                digest.update(chunk)
            item.seek(0)
    return digest.hexdigest()


def idempotency_begin(*, scope: str, key: str, fingerprint: str, mode: str = "json") -> tuple[IdempotencyRecord, bool]:
    """(record, is_new) for `key` sent by `scope` (e.g. "tenant:42"). Raises 400 for a
    reused key with another body (the fingerprint covers the body and the path)."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    IdempotencyRecord.objects.filter(scope=scope, key=key, created_at__lt=timezone.now() - TTL).delete()
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(scope=scope, key=key, request_hash=fingerprint, mode=mode), True
    except IntegrityError:
        record = IdempotencyRecord.objects.get(scope=scope, key=key)
    if record.request_hash != fingerprint:
        raise InvalidRequest(
            "This Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return record, False


def idempotency_attach_job(*, record_id: int, job_id: Any) -> None:
    """Called inside the job's transaction: the record and the job commit together."""
    IdempotencyRecord.objects.filter(pk=record_id).update(job_id=job_id)


def idempotency_complete(*, record: IdempotencyRecord, status: int, body: Any, headers: dict[str, str]) -> None:
    """Store a final answer. Successful generations store no body: they replay from the job."""
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        status=IdempotencyRecord.Status.COMPLETED,
        response_status=status,
        response_body=None if status == 200 and record.job_id else body,
        response_headers=headers,
    )


def idempotency_abandon(*, record: IdempotencyRecord) -> None:
    """Forget a key whose request changed nothing (so a retry may run afresh)."""
    IdempotencyRecord.objects.filter(pk=record.pk, job_id__isnull=True).delete()


def idempotency_forget_job(*, job_id: Any) -> None:
    """Forget the unanswered key of a job cancelled because its client left before it
    started (images.services.jobs.job_abandon, in its transaction): nothing was charged,
    so the client's retry with that key runs afresh."""
    IdempotencyRecord.objects.filter(job_id=job_id).exclude(status=IdempotencyRecord.Status.COMPLETED).delete()
