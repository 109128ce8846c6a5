"""Writes for generation jobs: submit (with the credit hold), wait, finish, fail.

The web tier calls generation_submit and job_wait; the worker (images.worker)
calls job_start, job_complete and job_fail. Every transition is a conditional
UPDATE on the job's status, so a message delivered twice, a worker that crashed
and came back, or a sweep racing a worker settles each job exactly once.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.errors import InvalidRequest, RateLimited, ServiceUnavailable
from accounts.models import APIKey, Tenant
from billing import services as billing
from billing.errors import InsufficientCredits
from billing.idempotency import idempotency_attach_job
from billing.models import CreditAccount, UsageRecord
from images import notify
from images.files import image_delete_files
from images.models import BlockedPrompt, GeneratedImage, ImageModel, Job, ModerationTerm
from images.validation import GenerationParams

logger = logging.getLogger(__name__)


def _ms(delta: timedelta | None) -> int | None:
    return None if delta is None else max(0, int(delta.total_seconds() * 1000))


def usage_record_refused(*, tenant: Tenant, api_key: APIKey | None, model: str, endpoint: str,
                         params: GenerationParams | None, outcome: str, error_code: str) -> UsageRecord:
    return UsageRecord.objects.create(
        tenant=tenant, api_key=api_key, model=model, endpoint=endpoint, n=params.n if params else 1,
        size=params.size if params else "", quality=params.quality if params else "",
        steps=params.steps if params else 0, outcome=outcome, error_code=error_code)


def generation_submit(*, tenant: Tenant, api_key: APIKey | None, model: ImageModel, params: GenerationParams,
                      endpoint: str, kind: str = Job.Kind.GENERATE, idempotency_record_id: int | None = None) -> Job:
    """Price the request, hold the credits and create the job in one transaction, then
    hand the job to the GPU queue after commit. Raises InsufficientCredits (402)
    before any job exists, and ServiceUnavailable (503) if the broker is down."""
    quote = billing.price_quote(model=model, kind=kind, size=params.size, quality=params.quality, n=params.n)
    try:
        with transaction.atomic():
            _in_flight_check(tenant=tenant)
            job = Job.objects.create(
                tenant=tenant, api_key=api_key, model=model, kind=kind, endpoint=endpoint,
                params=params.as_json(), prompt=params.model_prompt, n=params.n, width=params.width,
                height=params.height, steps=params.steps, guidance=params.guidance, seed=params.seed,
                quote=quote, deadline=timezone.now() + timedelta(seconds=settings.JOB_DEADLINE_SECONDS))
            billing.credits_hold(tenant=tenant, api_key=api_key, job=job, amount=quote)
            UsageRecord.objects.create(
                tenant=tenant, api_key=api_key, job=job, model=model.public_id, endpoint=endpoint, n=params.n,
                size=params.size, quality=params.quality, steps=params.steps)
            if idempotency_record_id is not None:
                idempotency_attach_job(record_id=idempotency_record_id, job_id=job.pk)
    except (InsufficientCredits, RateLimited) as exc:
        usage_record_refused(tenant=tenant, api_key=api_key, model=model.public_id, endpoint=endpoint,
                             params=params, outcome=UsageRecord.Outcome.REFUSED, error_code=exc.code or "")
        raise
    job_enqueue(job=job)
    return job


def _in_flight_check(*, tenant: Tenant) -> None:
    """Cap a tenant's queued and running jobs. The account row lock serialises the
    tenant's submissions, so two requests cannot both take the last slot."""
    cap = tenant.max_concurrent_jobs or settings.DEFAULT_MAX_CONCURRENT_JOBS
    if not cap:
        return
    locked = CreditAccount.objects.select_for_update().filter(tenant=tenant)
    if locked.first() is None:  # (a tenant without an account row yet gets one)
        billing.account_for(tenant=tenant)
        locked.first()
    in_flight = Job.objects.filter(tenant=tenant, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).count()
    if in_flight >= cap:
        raise RateLimited(f"Too many images in progress: your organization may have {cap} jobs queued or "
                          "running at once. Retry when one finishes.", headers={"Retry-After": "2"})


def job_enqueue(*, job: Job) -> None:
    """Send the job's message to its model's queue. If the broker refuses, the job is
    failed and its hold released before the caller hears 503: nothing stays held."""
    from images.actors import run_generation

    try:
        import dramatiq

        broker = dramatiq.get_broker()
        broker.declare_queue(job.model.queue)
        broker.enqueue(run_generation.message(str(job.pk)).copy(queue_name=job.model.queue))
    except Exception as exc:
        logger.warning("could not enqueue job %s: %s", job.pk, exc)
        job_fail(job_id=job.pk, code="service_unavailable", message="The job queue is unavailable.")
        raise ServiceUnavailable("The generation queue is unavailable; nothing was charged. Retry shortly.",
                                 headers={"Retry-After": "5"}) from exc


def job_wait(*, job_id: Any, timeout: float) -> Job:
    """Block until the job is terminal or `timeout` seconds pass; returns the fresh row."""
    deadline = time.monotonic() + timeout
    while True:
        # The signal is a hint (kept until collected, so one sent before this call still
        # counts); the database is the truth, re-read after it and at least every 2 s.
        remaining = deadline - time.monotonic()
        if remaining > 0:
            notify.job_wait_signal(str(job_id), min(remaining, 2.0))
        job = Job.objects.select_related("model", "hold").get(pk=job_id)  # (the hold: for the credit headers)
        if job.status in Job.TERMINAL or deadline - time.monotonic() <= 0:
            return job


def job_start(*, job_id: Any) -> Job | None:
    """Claim a job for running; None if it is already finished (a duplicate delivery)."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
        status=Job.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, steps_done=0)
    if not claimed:
        return None
    return Job.objects.select_related("model").get(pk=job_id)


def job_progress(*, job_id: Any, steps_done: int) -> None:
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(steps_done=steps_done)


def job_complete(*, job: Job, stored: list[dict[str, Any]], gpu_ms: int, prompt_tokens: int | None) -> bool:
    """Record the images, capture the hold and close the usage record, once.
    Returns False (and the caller deletes its files) if the job was settled meanwhile."""
    now = timezone.now()
    with transaction.atomic():
        won = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
            status=Job.Status.SUCCEEDED, finished_at=now, gpu_ms=gpu_ms, steps_done=job.steps,
            prompt_tokens=prompt_tokens)
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
            outcome=UsageRecord.Outcome.SUCCEEDED, images=delivered,
            pixels=sum(row["width"] * row["height"] for row in stored), credits_charged=charge,
            queue_wait_ms=_ms(job.started_at - job.created_at) if job.started_at else None,
            gpu_ms=gpu_ms, latency_ms=_ms(now - job.created_at))
    _inputs_delete(job)
    notify.job_notify(job.pk)
    return True


def _inputs_delete(job: Job) -> None:
    """An edit's stored init image and mask are needed until the job is terminal (a
    redelivered message reruns it), and never after."""
    extra = job.params.get("extra") or {}
    image_delete_files([name for name in (extra.get("init_file"), extra.get("mask_file")) if name])


def job_fail(*, job_id: Any, code: str, message: str, status: str = Job.Status.FAILED) -> bool:
    """Fail (or cancel) a job that is not yet terminal and release its hold in full."""
    now = timezone.now()
    with transaction.atomic():
        won = Job.objects.filter(pk=job_id).exclude(status__in=Job.TERMINAL).update(
            status=status, finished_at=now, error_code=code, error_message=message[:2000])
        if not won:
            return False
        job = Job.objects.get(pk=job_id)
        billing.hold_release(job=job)
        outcome = UsageRecord.Outcome.CANCELLED if status == Job.Status.CANCELLED else UsageRecord.Outcome.FAILED
        UsageRecord.objects.filter(job=job).update(
            outcome=outcome, error_code=code, latency_ms=_ms(now - job.created_at),
            queue_wait_ms=_ms(job.started_at - job.created_at) if job.started_at else None)
    _inputs_delete(job)
    notify.job_notify(job_id)
    return True


def jobs_sweep(*, now=None) -> int:
    """Fail every unfinished job past its deadline (releasing its hold). Safe to run
    from many processes at once: job_fail is conditional. Returns how many it failed."""
    now = now or timezone.now()
    count = 0
    for job_id in Job.objects.filter(deadline__lt=now).exclude(status__in=Job.TERMINAL).values_list("pk", flat=True):
        if job_fail(job_id=job_id, code="deadline_exceeded",
                    message="The job did not finish before its deadline; its credits were released."):
            count += 1
    return count


class ModerationBlocked(InvalidRequest):
    """400 in the body OpenAI uses for the request's profile (reference §9)."""


_terms_cache: dict[str, Any] = {"at": 0.0, "terms": None}
TERMS_TTL = 30.0  # seconds an edit in the admin takes to reach every web process


def moderation_terms() -> dict[str, dict[str, list[str]]]:
    """Enabled terms from the admin-editable table, cached briefly per process."""
    now = time.monotonic()
    if _terms_cache["terms"] is None or now - _terms_cache["at"] > TERMS_TTL:
        terms: dict[str, dict[str, list[str]]] = {}
        for category, tier, term in ModerationTerm.objects.filter(enabled=True).values_list("category", "tier", "term"):
            terms.setdefault(category, {}).setdefault(tier, []).append(term)
        _terms_cache.update(at=now, terms=terms)
    return _terms_cache["terms"]


def prompt_moderate(*, tenant: Tenant, api_key: APIKey | None, model: ImageModel, prompt: str, requested: str | None,
                    endpoint: str, request_id: str = "") -> None:
    """Check a prompt at the level the tenant and the request allow; a block is logged
    for the operator, recorded as usage and raised before any credit is held."""
    from images import moderation

    level = moderation.effective_level(tenant.moderation_level, requested)
    classifier = moderation.load_classifier(settings.MODERATION_CLASSIFIER) if settings.MODERATION_CLASSIFIER else None
    # An emptied term table falls back to the defaults rather than blocking nothing.
    verdict = moderation.moderation_check(prompt, level=level, terms=moderation_terms() or None, classifier=classifier)
    if not verdict.blocked:
        return
    BlockedPrompt.objects.create(tenant=tenant, api_key=api_key, model=model.public_id, endpoint=endpoint,
                                 level=level, categories=list(verdict.categories), matched=list(verdict.matched),
                                 prompt=prompt)
    UsageRecord.objects.create(tenant=tenant, api_key=api_key, model=model.public_id, endpoint=endpoint,
                               outcome=UsageRecord.Outcome.BLOCKED, error_code="moderation_blocked")
    if model.profile == ImageModel.Profile.GPT_IMAGE:
        raise ModerationBlocked(
            "Your request was rejected by the safety system. If you believe this is an error, contact your "
            f"platform operator and include the request ID {request_id}. "
            f"safety_violations=[{', '.join(verdict.categories)}].",
            type="image_generation_user_error", code="moderation_blocked")
    raise ModerationBlocked(
        "Your request was rejected as a result of our safety system. Your prompt may contain text that is "
        "not allowed by our safety system.", code="content_policy_violation")


def job_cancel(*, job: Job) -> bool:
    """Cancel a queued or running job and release its hold. A running pipeline call
    finishes on the GPU, but its result is discarded and nothing is charged."""
    return job_fail(job_id=job.pk, code="cancelled", message="The job was cancelled by the client.",
                    status=Job.Status.CANCELLED)
