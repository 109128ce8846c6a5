"""Dramatiq actors: thin. They take ids and call a service (house style rule 3).

This module is imported by the web tier (to send messages), so it must not import
torch: the worker code is imported inside the actor body.

Which errors are retried (the one rule; images.worker and docs/operations.md say the
same):
- Failures of the job itself (the pipeline raising, unreadable inputs, storage, the
  time limit or deadline reached) never reach Dramatiq: `job_run` fails the job and
  releases its hold in full, because a retry would fail the same way.
- Transient infrastructure errors that escape `job_run` (the database lost or busy
  while claiming or settling: django.db.OperationalError / InterfaceError) are retried,
  up to JOB_MAX_RETRIES times with backoff. That is safe for money: every transition is
  a conditional UPDATE on the job's status, so a rerun of a settled job does nothing,
  and the hold is captured or released once, keyed by the job.
- Anything else that escapes (a bug) is not retried: it would fail again.
When a message is not retried again, `generation_given_up` fails its job and releases
its hold at once (not at the deadline sweep); for a job already settled it does nothing.
"""

from __future__ import annotations

import dramatiq
from django.conf import settings
from django.db import InterfaceError, OperationalError

# Errors worth another attempt: the database connection lost, a lock or statement
# timeout. Everything else a rerun would only repeat.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)


def generation_should_retry(retries: int, exception: BaseException) -> bool:
    """Dramatiq's retry_when for run_generation: `retries` is how many retries the
    message had already; see the module docstring for the rule."""
    return retries < settings.JOB_MAX_RETRIES and isinstance(exception, TRANSIENT_ERRORS)


@dramatiq.actor(
    queue_name="gpu",  # the default; each message is routed to its model's queue
    max_retries=settings.JOB_MAX_RETRIES,  # (documentation: retry_when applies the limit)
    retry_when=generation_should_retry,
    # The backstop: images.worker stops the pipeline itself at PIPELINE_TIME_SHARE of it.
    time_limit=settings.JOB_TIME_LIMIT_MS,
    throws=(),
    min_backoff=1_000,
    max_backoff=30_000,
    # Sent once, when the message will not be retried again. (on_failure would be sent
    # on every failure, the retried ones included, and so fail a job about to be retried.)
    on_retry_exhausted="generation_given_up",
)
def run_generation(job_id: str) -> None:
    from images import tool_worker  # noqa: F401 (registers the tool job runners, issue 26)
    from images.worker import job_run

    job_run(job_id=job_id)


@dramatiq.actor(queue_name="default", max_retries=5, time_limit=60_000)
def generation_given_up(message_data: dict, retry_data: dict) -> None:
    """Sent by Dramatiq's Retries middleware when run_generation raised and will not be
    retried (a non-transient error, or the retries used up): fail the job and release
    its hold now rather than at its deadline. Does nothing for a job already settled."""
    from images.services.jobs import job_fail

    retries = retry_data.get("retries", 0)
    job_fail(
        job_id=message_data["args"][0],
        code="generation_failed",
        message=f"Image generation failed after {retries + 1} attempt(s).",
    )


def webhook_should_retry(retries: int, exception: BaseException) -> bool:
    """The webhook actors retry only the database lost or busy (their services are safe
    to run twice); a receiver's failures are retried by the service itself, with its own
    backoff (images.services.webhooks)."""
    return retries < 5 and isinstance(exception, TRANSIENT_ERRORS)


@dramatiq.actor(
    queue_name="default",
    max_retries=5,
    retry_when=webhook_should_retry,
    time_limit=120_000,
    throws=(),
    max_backoff=60_000,
)
def webhook_job_finished(job_id: str) -> None:
    """A job became terminal (sent after its commit by images.services.jobs): make its
    event's deliveries and send their first attempts (issue 24)."""
    from images.services.webhooks import webhook_events_create

    webhook_events_create(job_id=job_id)


@dramatiq.actor(
    queue_name="default",
    max_retries=5,
    retry_when=webhook_should_retry,
    time_limit=60_000,
    throws=(),
    max_backoff=60_000,
)
def webhook_deliver(delivery_id: str, attempt: int) -> None:
    """Attempt `attempt` (1-based) of one webhook delivery; a failed attempt queues the
    next one itself, delayed (images.services.webhooks.webhook_delivery_attempt)."""
    from images.services.webhooks import webhook_delivery_attempt

    webhook_delivery_attempt(delivery_id=delivery_id, attempt=attempt)
