"""Dramatiq actors: thin. They take ids and call a service (house style rule 3).

This module is imported by the web tier (to send messages), so it must not import
torch: the worker code is imported inside the actor body.
"""
from __future__ import annotations

import dramatiq
from django.conf import settings


@dramatiq.actor(
    queue_name="gpu",  # the default; each message is routed to its model's queue
    max_retries=settings.JOB_MAX_RETRIES,
    time_limit=settings.JOB_TIME_LIMIT_MS,
    # Failures a retry cannot fix (bad model, bad input) are settled by the service,
    # which fails the job and releases its hold; only unexpected errors reach Dramatiq
    # and are retried.
    throws=(),
    min_backoff=1_000,
    max_backoff=30_000,
    on_failure="generation_given_up",
)
def run_generation(job_id: str) -> None:
    from images.worker import job_run

    job_run(job_id=job_id)


@dramatiq.actor(queue_name="default", max_retries=5, time_limit=60_000)
def generation_given_up(message_data: dict, exception_data: dict) -> None:
    """Called by Dramatiq's Callbacks middleware when run_generation has used up its
    retries: fail the job and release its hold now rather than at its deadline."""
    from images.services.jobs import job_fail

    job_fail(job_id=message_data["args"][0], code="generation_failed",
             message=f"Image generation failed after retries ({exception_data.get('type', 'error')}).")
