"""Hands a created job to the GPU queue of its model. The only importer of
images.actors on the web side; called after the job's transaction commits."""

from __future__ import annotations

import logging

import dramatiq
from django.conf import settings

from core.errors import ServiceUnavailable
from images.actors import run_generation
from images.models import Job
from images.services.jobs import job_fail
from images.task_status import task_status_set

logger = logging.getLogger(__name__)


def queue_is_served(queue: str) -> bool:
    """Whether `queue` is one the workers of this installation serve (GPU_QUEUES)."""
    return queue in settings.GPU_QUEUES


def job_enqueue(*, job: Job) -> None:
    """Send the job's message to its model's queue. If the broker refuses, the job is
    failed and its hold released before the caller hears 503: nothing stays held."""
    task_status_set(job=job)  # polls read the queued task from here (images.task_status)
    try:
        broker = dramatiq.get_broker()
        broker.declare_queue(job.model.queue)
        broker.enqueue(run_generation.message(str(job.pk)).copy(queue_name=job.model.queue))
    except Exception as exc:
        logger.warning("could not enqueue job %s: %s", job.pk, exc)
        job_fail(job_id=job.pk, code="service_unavailable", message="The job queue is unavailable.")
        raise ServiceUnavailable(
            "The generation queue is unavailable; nothing was charged. Retry shortly.", headers={"Retry-After": "5"}
        ) from exc
