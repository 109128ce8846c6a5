"""Server-sent events for `stream: true` (reference §7).

Framing: `event: <type>` and `data: <json>` lines, a blank line after each; no
`[DONE]`, no `id:`; keep-alives are comment lines (the SDK ignores them, while an
event without data would crash it). Partial previews come from the worker through
images.notify (Redis or in-process), never through the database.

n > 1: the partial previews are those of the first image; then one `*.completed`
event per image, in order (input tokens are counted on the first). Output moderation
(issue 25): previews are classified before they are sent (withheld under `block`); an
image withheld has no `*.completed` event, and a job whose every image was withheld ends
with the `error` event of `moderation_blocked`.

Two iterators make the same frames: `sse_events` (sync: a WSGI thread reads the job's
events, blocking) and `sse_events_async` (the ASGI server: the events come from the
process's one subscriber, images.notify, and the stream holds no thread and no
database connection while it waits; the job is read on a thread at the start, at each
keep-alive and at the end). A client that leaves an async stream cancels it: a job not
yet started is abandoned (job_abandon, nothing charged), a started one runs on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
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


def _marked(event: dict[str, Any]) -> dict[str, Any]:
    """A preview's output-moderation mark (issue 25: blurred or flagged), when it has one.
    A preview the tenant's `block` withholds is never published (images/worker.py)."""
    return {"moderation": event["moderation"]} if event.get("moderation") else {}


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
                    **_marked(event),
                },
            )
            sent += 1
        elif event.get("type") == "done":
            break
    yield from _final_frames(job_id=job_id, prefix=prefix)


def _final_frames(*, job_id: Any, prefix: str) -> list[bytes]:
    """The frames that end a stream: one `*.completed` per image, or the error."""
    job = Job.objects.select_related("model", "hold").get(pk=job_id)
    error = job_error(job=job)  # the same message, type and code as a waiting request gets
    if error is not None:
        return [_frame("error", {"type": "error", **error.body()})]
    if job.status != Job.Status.SUCCEEDED:  # (a "done" event ahead of the row: not finished after all)
        return [_error_frame(f"The image is not ready (job {job.pk}, status {job.status}).", "job_wait_timeout")]
    frames = []
    for i, image in enumerate(job.images.all()):
        usage = usage_body(job, images=1, with_input=i == 0)  # input tokens are counted on the first image
        frames.append(
            _frame(
                f"{prefix}.completed",
                {
                    "type": f"{prefix}.completed",
                    "b64_json": base64.b64encode(image_read(image)).decode("ascii"),
                    **_common(job),
                    "usage": usage,
                    **({"seed": image.seed} if image.seed is not None else {}),  # our extension (docs/api.md)
                    **({"moderation": image.moderation} if image.moderation else {}),  # (issue 25)
                },
            )
        )
    return frames


def _stream_start(*, job_id: Any) -> tuple[dict[str, Any], int, bool]:
    job = Job.objects.select_related("model").get(pk=job_id)
    return _common(job), int(job.params.get("partial_images") or 0), job.status in Job.TERMINAL


async def sse_events_async(*, job_id: Any, prefix: str) -> AsyncIterator[bytes]:
    """The frames of `sse_events`, waiting on the event loop (see the module's docstring)."""
    from core.waiting import run_sync
    from images.services.jobs import job_settled

    loop = asyncio.get_running_loop()
    common, wanted, settled = await run_sync(_stream_start, job_id=job_id)
    sent = 0
    deadline = loop.time() + settings.JOB_WAIT_SECONDS
    yield b": stream open\n\n"
    try:
        async with notify.job_events(job_id) as events:
            settled = settled or await run_sync(job_settled, job_id=job_id)
            while not settled:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    yield _error_frame(
                        f"The image is still being generated (job {job_id}); read it later with "
                        f"GET /v1/images/tasks/{job_id}.",
                        "job_wait_timeout",
                    )
                    return
                try:
                    kind, event = await asyncio.wait_for(events.get(), min(KEEPALIVE_SECONDS, remaining))
                except TimeoutError:
                    settled = await run_sync(job_settled, job_id=job_id)  # (events are hints)
                    if not settled:
                        yield b": keep-alive\n\n"
                    continue
                if kind != "event":
                    continue
                if event.get("type") == "partial" and sent < wanted:
                    yield _frame(
                        f"{prefix}.partial_image",
                        {
                            "type": f"{prefix}.partial_image",
                            "b64_json": event["b64"],
                            **common,
                            "partial_image_index": sent,
                            **_marked(event),
                        },
                    )
                    sent += 1
                elif event.get("type") == "done":
                    settled = True
    except asyncio.CancelledError:
        # The client left: a job not started yet is cancelled and costs nothing.
        await asyncio.shield(run_sync(job_abandon, job_id=job_id))
        raise
    for frame in await run_sync(_final_frames, job_id=job_id, prefix=prefix):
        yield frame


def sse_response(
    *,
    job: Job,
    prefix: str,
    headers: dict[str, str] | None = None,
    client_gone: Callable[[], bool] | None = None,
    asynchronous: bool = False,
) -> StreamingHttpResponse:
    """The event stream of a job; `asynchronous`: an async iterator (the ASGI server)."""
    events = (
        sse_events_async(job_id=job.pk, prefix=prefix)
        if asynchronous
        else sse_events(job_id=job.pk, prefix=prefix, client_gone=client_gone)
    )
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    for key, value in (headers or {}).items():
        response[key] = value
    return response
