"""Server-sent events for `stream: true` (reference §7).

Framing: `event: <type>` and `data: <json>` lines, a blank line after each; no
`[DONE]`, no `id:`; keep-alives are comment lines (the SDK ignores them, while an
event without data would crash it). Partial previews come from the worker through
images.notify (Redis or in-process), never through the database.

n > 1: the partial previews are those of the first image; then one `*.completed`
event per image, in order (input tokens are counted on the first).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse

from core.waiting import CLIENT_POLL_SECONDS
from images import notify
from images.errors import job_error
from images.files import image_read
from images.models import Job
from images.serializers import usage_body
from images.services.jobs import job_abandon

KEEPALIVE_SECONDS = 10.0


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _common(job: Job) -> dict[str, Any]:
    params = job.params
    return {
        "created_at": int(job.created_at.timestamp()),
        "size": params["size"],
        "quality": params["quality"],
        "background": params["background"],
        "output_format": params["output_format"],
    }


def _error_frame(message: str, code: str | None, type_: str = "server_error") -> bytes:
    return _frame("error", {"type": "error", "error": {"message": message, "type": type_, "param": None, "code": code}})


def sse_events(*, job_id: Any, prefix: str, client_gone: Callable[[], bool] | None = None) -> Iterator[bytes]:
    """prefix: 'image_generation' or 'image_edit'. A job that is already finished (an
    Idempotency-Key replay) gets its completed events at once, without previews.

    client_gone (core.waiting.ClientWatch.gone) is asked every CLIENT_POLL_SECONDS
    while the stream waits: once the client has left, a job not yet started is
    abandoned (cancelled, nothing charged) and the stream ends; a started job is left
    to finish and be charged (its task, or a replay by Idempotency-Key, reads it)."""
    job = Job.objects.select_related("model").get(pk=job_id)
    wanted = int(job.params.get("partial_images") or 0)
    sent = 0
    deadline = time.monotonic() + settings.JOB_WAIT_SECONDS
    poll = KEEPALIVE_SECONDS if client_gone is None else CLIENT_POLL_SECONDS
    quiet_since = time.monotonic()
    yield b": stream open\n\n"
    while job.status not in Job.TERMINAL:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            yield _error_frame(
                f"The image is still being generated (job {job.pk}); read it later with GET /v1/images/tasks/{job.pk}.",
                "job_wait_timeout",
            )
            return
        event = notify.job_event_next(job.pk, min(poll, remaining))
        if client_gone is not None and client_gone():
            job_abandon(job_id=job.pk)
            return
        if event is None:
            if time.monotonic() - quiet_since < KEEPALIVE_SECONDS:
                continue
            quiet_since = time.monotonic()
            job.refresh_from_db(fields=["status"])
            if job.status in Job.TERMINAL:
                break
            yield b": keep-alive\n\n"
            continue
        if event.get("type") == "partial" and sent < wanted:
            yield _frame(
                f"{prefix}.partial_image",
                {
                    "type": f"{prefix}.partial_image",
                    "b64_json": event["b64"],
                    **_common(job),
                    "partial_image_index": sent,
                },
            )
            sent += 1
        elif event.get("type") == "done":
            break
    job = Job.objects.select_related("model", "hold").get(pk=job_id)
    error = job_error(job=job)  # the same message, type and code as a waiting request gets
    if error is not None:
        yield _frame("error", {"type": "error", **error.body()})
        return
    if job.status != Job.Status.SUCCEEDED:  # (a "done" event ahead of the row: not finished after all)
        yield _error_frame(f"The image is not ready (job {job.pk}, status {job.status}).", "job_wait_timeout")
        return
    import base64

    images = list(job.images.all())
    for i, image in enumerate(images):
        usage = usage_body(job, images=1, with_input=i == 0)  # input tokens are counted on the first image
        yield _frame(
            f"{prefix}.completed",
            {
                "type": f"{prefix}.completed",
                "b64_json": base64.b64encode(image_read(image)).decode("ascii"),
                **_common(job),
                "usage": usage,
                **({"seed": image.seed} if image.seed is not None else {}),  # our extension (docs/api.md)
            },
        )


def sse_response(
    *,
    job: Job,
    prefix: str,
    headers: dict[str, str] | None = None,
    client_gone: Callable[[], bool] | None = None,
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        sse_events(job_id=job.pk, prefix=prefix, client_gone=client_gone), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    for key, value in (headers or {}).items():
        response[key] = value
    return response
