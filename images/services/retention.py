"""Retention: what is deleted after RETENTION_DAYS, by `manage.py images_purge` and by
every worker's periodic sweep (images/middleware.py).

- Generated images of jobs finished before the cutoff: the objects in the store, then
  their rows; the job stays (it is billing history) and is marked `images_expired`, so
  that reading it answers 410 `images_expired` instead of links to nothing.
- Edit inputs (inputs/<job id>/...) of jobs finished before the cutoff, and any left in
  the store for jobs that no longer exist (normally deleted once the job settles).
- Tables that only grow: idempotency records past their 24 hours, expired sessions,
  login records (django-axes' access log) and blocked-prompt records older than the
  cutoff (they hold prompts), heartbeats of workers silent since the cutoff.
- Blocked-output records (issue 25: images the output check withheld) older than the
  cutoff, their staff-only thumbnails first: a picture of what was refused is kept no
  longer than the images that were delivered (the usage record keeps the action and
  categories).
Usage records, ledger rows and jobs are the accounts' history and are kept.

Objects are deleted before their rows: a sweep that dies half-way leaves rows whose
objects are gone, and the next sweep deletes those rows (deleting an absent object is
not an error), never objects that no row names. Safe to run from many processes at once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from core.heartbeats import heartbeats_prune
from core.idempotency import TTL as IDEMPOTENCY_TTL
from core.models import IdempotencyRecord
from images.files import ImagesExpired, image_delete_files, image_thumbnail_name
from images.models import BlockedOutput, BlockedPrompt, GeneratedImage, Job

logger = logging.getLogger(__name__)

BATCH = 500  # jobs per transaction


@dataclass
class RetentionResult:
    cutoff: datetime | None = None
    jobs: int = 0  # jobs whose images were purged
    images: int = 0  # image objects deleted
    inputs: int = 0  # stored edit inputs deleted
    rows: dict[str, int] = field(default_factory=dict)  # other tables: rows deleted

    @property
    def total(self) -> int:
        return self.images + self.inputs + sum(self.rows.values())

    def summary(self) -> str:
        tables = ", ".join(f"{n} {name}" for name, n in self.rows.items() if n)
        return f"{self.images} image(s) of {self.jobs} job(s), {self.inputs} input file(s)" + (
            f"; rows: {tables}" if tables else ""
        )


def retention_cutoff(*, now: datetime | None = None, days: int | None = None) -> datetime | None:
    days = settings.RETENTION_DAYS if days is None else days
    if days <= 0:
        return None
    return (now or timezone.now()) - timedelta(days=days)


def images_purge(*, cutoff: datetime, dry_run: bool = False) -> tuple[int, int, int]:
    """Delete the images and stored inputs of jobs finished before `cutoff`.
    Returns (jobs, images, inputs)."""
    due = GeneratedImage.objects.filter(job__finished_at__lt=cutoff)
    if dry_run:
        return due.values("job_id").distinct().count(), due.count(), _inputs_purge(cutoff=cutoff, dry_run=True)
    jobs = images = 0
    skipped: set = set()  # jobs with an object the store would not delete: left for the next sweep
    while True:
        batch = list(due.exclude(job_id__in=skipped).values_list("job_id", flat=True).distinct()[:BATCH])
        if not batch:
            break
        rows = list(GeneratedImage.objects.filter(job_id__in=batch).values_list("job_id", "file"))
        # (the dashboard's cached thumbnail goes with its image: images.files.image_thumbnail)
        failed = {job_id for job_id, name in rows if not (_delete(name) and _delete(image_thumbnail_name(name)))}
        skipped |= failed
        done = [job_id for job_id in batch if job_id not in failed]
        with transaction.atomic():
            GeneratedImage.objects.filter(job_id__in=done).delete()
            Job.objects.filter(pk__in=done, status=Job.Status.SUCCEEDED).update(
                error_code=ImagesExpired.code,
                error_message=f"The images were deleted after {settings.RETENTION_DAYS} days (retention).",
            )
        jobs += len(done)
        images += sum(1 for job_id, _ in rows if job_id not in failed)
    if skipped:
        logger.warning("retention: the store refused deletions for %d job(s); retried next sweep", len(skipped))
    return jobs, images, _inputs_purge(cutoff=cutoff, dry_run=False)


def _delete(name: str) -> bool:
    """Delete one stored object; True when it is gone (or was never there)."""
    try:
        default_storage.delete(name)
        return True
    except Exception:
        logger.warning("retention: could not delete %s", name, exc_info=True)
        return False


def _inputs_purge(*, cutoff: datetime, dry_run: bool) -> int:
    """Stored inputs under inputs/<job id>/ whose job finished before the cutoff or no
    longer exists. Listing the prefix works on local files and object stores alike."""
    try:
        folders, _ = default_storage.listdir("inputs")
    except FileNotFoundError:
        return 0
    ids = {}
    for folder in folders:
        try:
            ids[uuid.UUID(folder)] = folder
        except ValueError:
            continue
    if not ids:
        return 0
    alive = dict(Job.objects.filter(pk__in=list(ids)).values_list("pk", "finished_at"))
    deleted = 0
    for job_id, folder in ids.items():
        if job_id in alive and (alive[job_id] is None or alive[job_id] >= cutoff):
            continue  # queued or running (needs its inputs), or finished recently
        _, files = default_storage.listdir(f"inputs/{folder}")
        if not dry_run:
            image_delete_files([f"inputs/{folder}/{name}" for name in files])
        deleted += len(files)
    return deleted


def blocked_outputs_purge(*, cutoff: datetime) -> int:
    """Delete the blocked-output records made before `cutoff` and their thumbnails
    (objects first; a row whose thumbnail the store would not delete stays for the next
    sweep). Returns the rows deleted."""
    deleted = 0
    while True:
        rows = list(
            BlockedOutput.objects.filter(created_at__lt=cutoff).order_by("pk").values_list("pk", "thumbnail")[:BATCH]
        )
        done = [pk for pk, thumbnail in rows if not thumbnail or _delete(thumbnail)]
        if done:
            deleted += BlockedOutput.objects.filter(pk__in=done).delete()[0]
        if len(done) < len(rows) or len(rows) < BATCH:
            return deleted


def tables_prune(*, cutoff: datetime, now: datetime | None = None) -> dict[str, int]:
    """Rows of the tables that only grow (module docstring); counts by table."""
    from django.contrib.sessions.models import Session

    now = now or timezone.now()
    rows = {
        "idempotency_records": IdempotencyRecord.objects.filter(created_at__lt=now - IDEMPOTENCY_TTL).delete()[0],
        "sessions": Session.objects.filter(expire_date__lt=now).delete()[0],
        "blocked_prompts": BlockedPrompt.objects.filter(created_at__lt=cutoff).delete()[0],
        "blocked_outputs": blocked_outputs_purge(cutoff=cutoff),
        "worker_heartbeats": heartbeats_prune(before=cutoff),
    }
    try:
        from axes.models import AccessLog

        rows["login_records"] = AccessLog.objects.filter(attempt_time__lt=cutoff).delete()[0]
    except Exception:  # django-axes not installed or its log off
        pass
    return rows


def retention_sweep(*, now: datetime | None = None, days: int | None = None, dry_run: bool = False) -> RetentionResult:
    """Everything past the retention period, in one call (the command and the sweep)."""
    now = now or timezone.now()
    cutoff = retention_cutoff(now=now, days=days)
    result = RetentionResult(cutoff=cutoff)
    if cutoff is None:
        return result
    result.jobs, result.images, result.inputs = images_purge(cutoff=cutoff, dry_run=dry_run)
    if not dry_run:
        result.rows = tables_prune(cutoff=cutoff, now=now)
    return result
