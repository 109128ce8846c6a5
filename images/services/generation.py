"""The one path from a parsed request to a queued, paid job."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import APIKey, Tenant
from billing import services as billing
from billing.errors import InsufficientCredits
from billing.models import CreditAccount, UsageRecord
from core.errors import RateLimited
from core.idempotency import idempotency_attach_job
from images.dispatch import job_enqueue
from images.models import ImageModel, Job
from images.validation import GenerationParams


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


