"""What a finished job that has no images to give says, wherever it is seen: the answer
of a request that waited on it, the `error` event of its stream, an Idempotency-Key
replay, the vendor shapes and the task (`GET /v1/images/tasks/{id}`, the playground).

One rule (HOUSE_STYLE 10, issue 19): the official SDKs retry 408, 409, 429 and every
5xx, and a retry of a charged POST submits a new job. A job that will not run again
and that a retry cannot fix (cancelled by the caller, the owner or an operator; out of
time) is a 4xx that says so, with `x-should-retry: false`. Only a transient fault that
a retry can fix (the queue was away when it was sent) keeps a retryable 5xx. A model
fault stays the seeds' 502 `generation_failed`, with `x-should-retry: false`. The table
is in docs/api.md ("When a job ends without images").
"""

from __future__ import annotations

from django.conf import settings

from core.errors import APIError, InvalidRequest, ServiceUnavailable, UpstreamError
from images.files import ImagesExpired, job_images_expired
from images.models import Job


class JobCancelled(APIError):
    """410: the job was cancelled (DELETE /v1/images/tasks/{id}, by the caller or
    anyone else allowed to) before it finished. Deliberate and final: a retry would run
    again the very job that was cancelled, so it is never a 409 or a 5xx."""

    status_code = 410
    type = "invalid_request_error"
    code = "job_cancelled"
    should_retry = False


class JobOutOfTime(APIError):
    """410: the job did not finish in time (`deadline_exceeded`: it waited past its
    deadline, found by the sweep or by the worker that took it; `time_limit_exceeded`:
    its pipeline ran past JOB_TIME_LIMIT_MS). It will not run again and nothing was
    charged. Not a 504 or 503: the SDKs would resubmit at once into the same backlog or
    the same limit; the caller may submit again when it chooses."""

    status_code = 410
    type = "server_error"
    should_retry = False


class OutputModerationBlocked(APIError):
    """400: every image of the job was withheld by the output classifier (issue 25; a
    tenant on `block`, images/services/output_moderation.py). OpenAI's answer for an
    image its output check refused: type `image_generation_user_error`, code
    `moderation_blocked`, and `moderation_details` beside the four envelope fields
    ({"moderation_stage": "output", "categories": [...]}). Nothing was charged; a retry
    would run a new job (with a new seed, it may pass), so it is the caller's choice."""

    status_code = 400
    type = "image_generation_user_error"
    code = "moderation_blocked"
    should_retry = False

    def __init__(self, message: str, *, categories: list[str], **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.categories = list(categories)

    def body(self) -> dict:
        body = super().body()
        body["error"]["moderation_details"] = {"moderation_stage": "output", "categories": self.categories}
        return body


# The error code of a job whose every image the output classifier withheld.
OUTPUT_MODERATION_BLOCKED = "moderation_blocked"
OUT_OF_TIME = ("deadline_exceeded", "time_limit_exceeded")
# The error code of a job stopped by its client's `Cancel-After` (images.services.jobs).
CANCEL_AFTER_EXCEEDED = "cancel_after_exceeded"
# images.worker's code for a job its model's family cannot serve (a 400, like the web tier's).
UNSUPPORTED_BY_FAMILY = "unsupported_parameter"


def _charged_note(job: Job) -> str:
    hold = getattr(job, "hold", None)  # (None without one: the reverse accessor raises an AttributeError)
    charged = hold.captured if hold is not None else 0
    if charged:
        return f"job {job.pk}; {charged} credits were charged for the steps it ran"
    return f"job {job.pk}; nothing was charged"


def job_error(*, job: Job) -> APIError | None:
    """The typed error for a finished job without images to show (None: succeeded with
    its images, or not finished). Its message names the job and what was charged."""
    if job.status == Job.Status.SUCCEEDED:
        if job_images_expired(job):
            return ImagesExpired(
                job.error_message or f"The images were deleted after {settings.RETENTION_DAYS} days (retention)."
            )
        return None
    if job.status not in (Job.Status.FAILED, Job.Status.CANCELLED):
        return None
    message = f"{job.error_message} ({_charged_note(job)})"
    if job.status == Job.Status.CANCELLED and job.error_code == "client_disconnected":
        # (jobs.job_abandon: its client left before it started; docs/api.md, issue 20)
        return JobCancelled(
            f"The client disconnected before the job started ({_charged_note(job)}).", code="client_disconnected"
        )
    if job.status == Job.Status.CANCELLED and job.error_code == CANCEL_AFTER_EXCEEDED:
        # (the client's own Cancel-After passed: jobs.job_deadline_reached; issue 24)
        return JobCancelled(f"{message} It was cancelled.", code=CANCEL_AFTER_EXCEEDED)
    if job.status == Job.Status.CANCELLED:
        return JobCancelled(f"The job was cancelled before it finished ({_charged_note(job)}).")
    if job.error_code == OUTPUT_MODERATION_BLOCKED:
        categories = (job.output_moderation or {}).get("categories") or []
        return OutputModerationBlocked(
            "Your request was rejected by the safety system: the generated image was withheld "
            f"(job {job.pk}; nothing was charged). safety_violations=[{', '.join(categories)}].",
            categories=categories,
        )
    if job.error_code in OUT_OF_TIME:
        return JobOutOfTime(f"{message} Submit the request again to start a new job.", code=job.error_code)
    if job.error_code == UNSUPPORTED_BY_FAMILY:
        # The worker found the model's family cannot serve it (the row said otherwise and
        # is corrected now): the web tier's own 400, which a retry would only repeat.
        return InvalidRequest(message, code=UNSUPPORTED_BY_FAMILY)
    if job.error_code == "service_unavailable":
        return ServiceUnavailable(message, headers={"Retry-After": "5"})
    return UpstreamError(message, code=job.error_code or None)
