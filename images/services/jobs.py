"""Writes for a job's life after it was created: wait, start, progress, complete,
fail, cancel, sweep.

The web tier calls job_wait, job_cancel and job_abandon; the worker (images.worker) calls
job_start, job_progress, job_complete and job_fail. Every transition is a conditional
UPDATE on the job's status, so a message delivered twice, a worker that crashed
and came back, or a sweep racing a worker settles each job exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from billing import services as billing
from billing.models import UsageRecord
from core.db.returning import update_returning_joined
from images import notify, task_status
from images.errors import CANCEL_AFTER_EXCEEDED
from images.files import image_delete_files
from images.models import GeneratedImage, Job
from images.services.webhooks import webhooks_job_settled, webhooks_job_started

logger = logging.getLogger(__name__)


def _ms(delta: timedelta | None) -> int | None:
    return None if delta is None else max(0, int(delta.total_seconds() * 1000))


def job_wait(*, job_id: Any, timeout: float, client_gone: Callable[[], bool] | None = None) -> Job:
    """Block until the job is terminal or `timeout` seconds pass; returns the fresh row.

    client_gone: whether the waiting client has left (core.waiting.ClientWatch.gone),
    asked every CLIENT_POLL_SECONDS. Once it has: a job not yet started is abandoned
    (job_abandon: cancelled, nothing charged) and returned; a started one is returned as
    it is, still running, and the caller stops waiting."""
    from core.logging import log_context_bind
    from core.waiting import CLIENT_POLL_SECONDS

    log_context_bind(job_id=str(job_id))  # the rest of this request's log lines name the job
    deadline = time.monotonic() + timeout
    step = 2.0 if client_gone is None else CLIENT_POLL_SECONDS
    read_at = 0.0
    while True:
        # The signal is a hint (kept until collected, so one sent before this call still
        # counts); the database is the truth, re-read after it and at least every 2 s.
        remaining = deadline - time.monotonic()
        signalled = remaining > 0 and notify.job_wait_signal(str(job_id), min(remaining, step))
        if client_gone is not None and client_gone():
            job_abandon(job_id=job_id)
            return Job.objects.select_related("model", "hold").get(pk=job_id)
        now = time.monotonic()
        if not (signalled or now - read_at >= 2.0 or deadline - now <= 0):
            continue
        read_at = now
        job = Job.objects.select_related("model", "hold").get(pk=job_id)  # (the hold: for the credit headers)
        if job.status in Job.TERMINAL or deadline - time.monotonic() <= 0:
            return job


# Seconds between two checks of a job by a waiter without a thread (its events are hints).
RECHECK_SECONDS = 10.0


def job_settled(*, job_id: Any) -> bool:
    """Whether the job is final: its status snapshot (images.task_status, no database)
    when it has one, else one read of its row."""
    snapshot = task_status.task_status_read(job_id=job_id)
    if snapshot.get("final"):
        return True
    if task_status.task_status_live(snapshot):
        return False
    return Job.objects.filter(pk=job_id, status__in=Job.TERMINAL).exists()


async def job_wait_async(*, job_id: Any, timeout: float) -> bool:
    """Wait without a thread (the ASGI server, core/waiting.py) until the job is final or
    `timeout` seconds pass; returns whether it is final. Woken by the job's events
    (images.notify's one subscriber per process); checks the job once after
    subscribing and every RECHECK_SECONDS (a lost event costs at most that); a "done"
    event ends the wait at once (it is sent after the settle's commit). The caller
    reads the row after. Cancelled (its client left), it just stops: the caller
    abandons the job (job_abandon)."""
    from core.waiting import run_sync

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with notify.job_events(job_id) as events:
        while True:
            if await run_sync(job_settled, job_id=job_id):
                return True
            check_at = min(deadline, loop.time() + RECHECK_SECONDS)
            while (remaining := check_at - loop.time()) > 0:
                try:
                    kind, event = await asyncio.wait_for(events.get(), remaining)
                except TimeoutError:
                    break
                if kind == "event" and event.get("type") == "done":
                    # Final: every "done" is published after the settling transaction
                    # commits (job_complete, job_fail, _job_cancel, job_abandon), so no
                    # second check (a thread hop and a Redis read, ~1 ms; issue 20).
                    return True
            if loop.time() >= deadline:
                return await run_sync(job_settled, job_id=job_id)


def job_start(*, job_id: Any) -> Job | None:
    """Claim a job for running; None if it is already finished (a duplicate delivery)."""
    now = timezone.now()
    claimable = Job.objects.filter(pk=job_id, status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    change = {"status": Job.Status.RUNNING, "attempts": F("attempts") + 1, "started_at": now, "steps_done": 0}
    # One statement on PostgreSQL: the conditional UPDATE returns the job with its model
    # (core.db.returning); elsewhere the UPDATE, then the read.
    claimed = update_returning_joined(claimable, "model", **change)
    if claimed is None:
        if not claimable.update(**change):
            return None
        job = Job.objects.select_related("model").get(pk=job_id)
    elif not claimed:
        return None
    else:
        job = claimed[0]
    task_status.task_status_set(job=job)  # polls see it running, without the database
    webhooks_job_started(job=job)  # (a Midjourney-proxy task's notifyHook hears IN_PROGRESS)
    return job


def job_progress(*, job_id: Any, steps_done: int) -> bool:
    """Record that at least `steps_done` of the job's steps are done (never lowers it:
    progress writes and preview steps arrive from different threads). Returns False
    when the job is no longer running (then nothing is written)."""
    return bool(
        Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
            steps_done=Greatest(F("steps_done"), steps_done)
        )
    )


# What a succeeded job's usage record says (its error_code) when the output classifier
# acted on some of its images (issue 25; Job.output_moderation holds the details).
OUTPUT_MODERATION_USAGE_CODES = {"blocked": "output_withheld", "blurred": "output_blurred", "flagged": "output_flagged"}


def _usage_output_fields(summary: dict[str, Any] | None) -> dict[str, Any]:
    """The usage record's output-moderation columns (billing.models.UsageRecord:
    output_action, output_categories, images_withheld) from a job's summary
    (images/services/output_moderation.job_output_summary; {} = nothing found)."""
    summary = summary or {}
    return {
        "output_action": summary.get("action") or "",
        "output_categories": list(summary.get("categories") or []),
        "images_withheld": len(summary.get("withheld") or []),
    }


def job_complete(
    *,
    job: Job,
    stored: list[dict[str, Any]],
    gpu_ms: int,
    prompt_tokens: int | None,
    output_moderation: dict[str, Any] | None = None,
) -> bool:
    """Record the images, capture the hold and close the usage record, once.
    Returns False (and the caller deletes its files) if the job was settled meanwhile.

    `stored` are the images delivered: an image the output classifier withheld is not
    among them, so it is not charged (the charge is pro rata to `len(stored)`).
    `output_moderation` (images/services/output_moderation.job_output_summary) is kept
    on the job and on the usage record (its output_* columns; error_code names it too)."""
    now = timezone.now()
    with transaction.atomic():
        won = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
            status=Job.Status.SUCCEEDED,
            finished_at=now,
            gpu_ms=gpu_ms,
            steps_done=job.steps,
            prompt_tokens=prompt_tokens,
            output_moderation=output_moderation or {},
        )
        if not won:
            return False
        GeneratedImage.objects.bulk_create([GeneratedImage(job=job, **row) for row in stored])
        delivered = len(stored)
        # The charge is the quote, pro rata if fewer images were made than asked for.
        charge = job.quote * delivered // job.n if job.n else 0
        billing.hold_capture(job=job, charge=charge)
        if job.started_at is None:  # (the worker passes the row job_start returned)
            job.refresh_from_db(fields=["started_at"])
        UsageRecord.objects.filter(job=job).update(
            outcome=UsageRecord.Outcome.SUCCEEDED,
            images=delivered,
            pixels=sum(row["width"] * row["height"] for row in stored),
            credits_charged=charge,
            queue_wait_ms=_ms(job.started_at - job.created_at) if job.started_at else None,
            gpu_ms=gpu_ms,
            latency_ms=_ms(now - job.created_at),
            error_code=OUTPUT_MODERATION_USAGE_CODES.get((output_moderation or {}).get("action"), ""),
            **_usage_output_fields(output_moderation),
        )
    _inputs_delete(job)
    task_status.task_status_final(job_id=job.pk)
    notify.job_notify(job.pk)
    webhooks_job_settled(job=job)  # (issue 24: after the commit, never inside it)
    return True


def _inputs_delete(job: Job) -> None:
    """An edit's stored init image and mask are needed until the job is terminal (a
    redelivered message reruns it), and never after."""
    extra = job.params.get("extra") or {}
    image_delete_files([name for name in (extra.get("init_file"), extra.get("mask_file")) if name])


def job_fail(
    *,
    job_id: Any,
    code: str,
    message: str,
    status: str = Job.Status.FAILED,
    output_moderation: dict[str, Any] | None = None,
) -> bool:
    """Fail (or cancel) a job that is not yet terminal and release its hold in full.

    `output_moderation`: the job failed because the output classifier withheld every
    image (issue 25): kept on the job, and its usage record's outcome is `blocked`."""
    now = timezone.now()
    with transaction.atomic():
        won = (
            Job.objects.filter(pk=job_id)
            .exclude(status__in=Job.TERMINAL)
            .update(
                status=status,
                finished_at=now,
                error_code=code,
                error_message=message[:2000],
                output_moderation=output_moderation or {},
            )
        )
        if not won:
            return False
        job = Job.objects.get(pk=job_id)
        billing.hold_release(job=job)
        outcome = UsageRecord.Outcome.CANCELLED if status == Job.Status.CANCELLED else UsageRecord.Outcome.FAILED
        if output_moderation:
            outcome = UsageRecord.Outcome.BLOCKED
        UsageRecord.objects.filter(job=job).update(
            outcome=outcome,
            error_code=code,
            latency_ms=_ms(now - job.created_at),
            queue_wait_ms=_ms(job.started_at - job.created_at) if job.started_at else None,
            **_usage_output_fields(output_moderation),
        )
    _inputs_delete(job)
    task_status.task_status_final(job_id=job_id)
    notify.job_notify(job_id)
    webhooks_job_settled(job=job)
    return True


def jobs_sweep(*, now=None) -> int:
    """Stop every unfinished job past its deadline (`job_deadline_reached`: the
    operator's deadline fails it and releases its hold; a client's Cancel-After cancels
    it by the cancel rules). Safe to run from many processes at once: every transition
    is conditional. Returns how many it stopped."""
    now = now or timezone.now()
    count = 0
    for job_id in Job.objects.filter(deadline__lt=now).exclude(status__in=Job.TERMINAL).values_list("pk", flat=True):
        if job_deadline_reached(job_id=job_id):
            count += 1
    return count


def job_deadline_reached(*, job_id: Any) -> bool:
    """Stop an unfinished job whose deadline has passed; returns whether this call
    settled it (False: finished meanwhile, by anyone).

    Two deadlines meet in `Job.deadline` (images.services.generation): the operator's
    JOB_DEADLINE_SECONDS and the client's `Cancel-After` (recorded in `params` when it is
    the earlier). The client's deadline follows the cancel rules (`job_cancel`: not
    started = free, else the steps run are charged; status `cancelled`, error code
    `cancel_after_exceeded`); the operator's fails the job (`deadline_exceeded`, hold
    released in full)."""
    job = Job.objects.filter(pk=job_id).exclude(status__in=Job.TERMINAL).first()
    if job is None:
        return False
    if (job.params or {}).get("cancel_after"):
        won, _ = _job_cancel(
            job=job,
            code=CANCEL_AFTER_EXCEEDED,
            message=f"The job did not finish within its Cancel-After ({job.params['cancel_after']:g} s).",
        )
        return won
    return job_fail(
        job_id=job.pk,
        code="deadline_exceeded",
        message="The job did not finish before its deadline; its credits were released.",
    )


def job_cancel(*, job: Job) -> int:
    """Cancel a queued or running job for its client; returns the credits charged.

    The client pays for the work done: ceil(quote * steps_done / steps) credits,
    captured from the hold (the rest released), where steps_done is what the worker
    recorded (in the job's status snapshot or, for previews, in the row: the larger),
    delivered previews included (a preview at step k is recorded as k steps
    done before it is sent; see images.worker). A job that had not started (or had done
    no step) is charged 0 and its hold released in full. The job turns `cancelled` at
    once; its worker notices within a step or so, stops its pipeline and settles
    nothing more (job_complete and job_fail are conditional on a live status).

    Idempotent: a job already finished (cancelled, failed, succeeded) is left alone and
    0 returned; the capture is keyed by the job, so it happens at most once.
    """
    return _job_cancel(job=job, code="cancelled", message="The job was cancelled by the client.")[1]


def _job_cancel(*, job: Job, code: str, message: str) -> tuple[bool, int]:
    """job_cancel's rules with the recorded reason; returns (whether this call
    cancelled it, the credits charged)."""
    now = timezone.now()
    # The steps the worker reported outside the database (images.task_status) count as
    # done too; the row keeps the larger of the two, so what is charged is what it shows.
    reported = task_status.task_status_steps_done(job_id=job.pk)
    with transaction.atomic():
        won = Job.objects.filter(pk=job.pk, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
            status=Job.Status.CANCELLED,
            finished_at=now,
            error_code=code,
            error_message=message,
            steps_done=Greatest(F("steps_done"), reported),
        )
        if not won:
            return False, 0
        # Read after the update: progress writes need status RUNNING, so steps_done is final.
        row = Job.objects.get(pk=job.pk)
        steps_done = min(row.steps_done, row.steps)
        charge = -(-row.quote * steps_done // row.steps) if row.steps else 0  # ceil, in integers
        if charge:
            billing.hold_capture(job=row, charge=charge)
        else:
            billing.hold_release(job=row)
        UsageRecord.objects.filter(job=row).update(
            outcome=UsageRecord.Outcome.CANCELLED,
            error_code=code,
            credits_charged=charge,
            latency_ms=_ms(now - row.created_at),
            queue_wait_ms=_ms(row.started_at - row.created_at) if row.started_at else None,
        )
    _inputs_delete(row)
    task_status.task_status_final(job_id=row.pk)
    notify.job_notify(row.pk)
    webhooks_job_settled(job=row)
    return True, charge


def job_abandon(*, job_id: Any) -> bool:
    """The client of a waiting request left (core.waiting) before its job started:
    cancel the job (`client_disconnected`), release its hold in full (nothing charged)
    and forget its Idempotency-Key, all in one transaction, so that the client's retry
    with the same key runs afresh instead of replaying the cancellation (docs/api.md,
    "A client that leaves"). A job already started (or finished) is left alone: it runs
    to completion, is charged, and is read back by its key or its task. Returns whether
    the job was cancelled; safe to call twice (the update is conditional on `queued`)."""
    from core.idempotency import idempotency_forget_job

    now = timezone.now()
    with transaction.atomic():
        won = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
            status=Job.Status.CANCELLED,
            finished_at=now,
            error_code="client_disconnected",
            error_message="The client disconnected before the job started; nothing was charged.",
        )
        if not won:
            return False
        job = Job.objects.get(pk=job_id)
        billing.hold_release(job=job)
        UsageRecord.objects.filter(job=job).update(
            outcome=UsageRecord.Outcome.CANCELLED,
            error_code="client_disconnected",
            credits_charged=0,
            latency_ms=_ms(now - job.created_at),
        )
        idempotency_forget_job(job_id=job_id)
    logger.info("client left before job %s started: cancelled, nothing charged", job_id)
    _inputs_delete(job)
    task_status.task_status_final(job_id=job_id)
    notify.job_notify(job_id)
    webhooks_job_settled(job=job)
    return True
