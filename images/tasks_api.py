"""GET and DELETE /v1/images/tasks/{id}: a job read (from its status snapshot while
queued or running, without the database; issue 20), long-polled (`?wait=N`, a
`TaskWait` under ASGI), or cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.principals import Caller
from core.errors import InvalidRequest
from core.schema import AUTH_ERRORS, errors
from core.waiting import (
    DeferredResponse,
    ServerBusy,
    client_watch_of,
    request_is_asgi,
    run_sync,
    waiting_slot_take,
)
from images import task_status
from images.charged import active_caller, base_url, response_rendered, tenant_job
from images.models import Job
from images.serializers import (
    TaskSerializer,
    task_body,
    task_body_from_status,
)
from images.services import jobs as job_services

# Seconds a client is asked to wait before polling a queued or running task again, and
# the longest long poll (`?wait=`).
TASK_RETRY_AFTER = 1
TASK_MAX_WAIT = 60


def task_wait_seconds(raw: str | None) -> int:
    """`?wait=N`: a whole number of seconds from 0 to TASK_MAX_WAIT (absent: 0)."""
    if raw is None:
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 or int(raw) > TASK_MAX_WAIT:
        raise InvalidRequest(
            f"'wait' must be a whole number of seconds from 0 to {TASK_MAX_WAIT}.", param="wait", code="invalid_value"
        )
    return int(raw)


def task_headers(body: dict[str, Any]) -> dict[str, str]:
    """The headers of a task's answer: Retry-After while it is queued or running."""
    return {} if body["status"] in Job.TERMINAL else {"Retry-After": str(TASK_RETRY_AFTER)}


class TaskViewSet(viewsets.ViewSet):
    """GET /v1/images/tasks/{id} reads a job; DELETE cancels it. Another tenant's job is
    a 404, exactly like one that does not exist."""

    lookup_field = "task_id"
    lookup_value_regex = "[^/]+"

    def _job(self, request: Request, task_id: str) -> Job:
        return tenant_job(request, task_id)

    def _task(self, request: Request, task_id: str, caller: Caller | None) -> tuple[dict[str, Any], dict[str, str]]:
        """The task body and the status snapshot it was read with: a queued or running
        task of the caller's tenant from its snapshot (no database), else from the row."""
        status = task_status.task_status_read(job_id=task_id)
        live = task_status.task_status_live(status)
        if live and caller is not None and live["tenant"] == str(caller.tenant.pk):
            return task_body_from_status(job_id=task_id, status=live), status
        return task_body(job=self._job(request, task_id), base_url=base_url(request)), status

    @extend_schema(
        summary="Read a task",
        tags=["tasks"],
        description="A queued or running task is answered with `Retry-After` (seconds until the next "
        "poll is worth it). `?wait=N` (0 to 60 seconds) holds the answer until the task changes "
        "(a new status, a step done, the end) or N seconds pass (docs/api.md).",
        parameters=[
            OpenApiParameter(
                "wait", OpenApiTypes.INT, OpenApiParameter.QUERY, required=False, description="Long poll, 0-60 s"
            )
        ],
        responses={200: TaskSerializer, **errors(400, 404, *AUTH_ERRORS)},
    )
    def retrieve(self, request: Request, task_id: str) -> Response:
        wait = task_wait_seconds(request.query_params.get("wait"))
        caller = active_caller(request)
        body, seen = self._task(request, task_id, caller)
        if wait and body["status"] not in Job.TERMINAL:
            # A long poll waits like a generation: it takes a waiting place
            # (core/waiting.py), and without one answers at once (a short poll).
            try:
                slot = waiting_slot_take()
            except ServerBusy:
                slot = None
            if slot is not None and request_is_asgi(request):
                client_watch_of(request).handoff(slot.release)
                deferred = TaskWait(view=self, request=request, task_id=task_id, caller=caller, seen=seen, wait=wait)
                deferred.slot = slot
                return deferred
            if slot is not None:
                try:
                    task_status.task_status_wait(job_id=task_id, seen=seen, timeout=wait)
                finally:
                    slot.release()
                body, _ = self._task(request, task_id, caller)
        return self._task_response(body)

    def _task_response(self, body: dict[str, Any]) -> Response:
        return Response(body, headers=task_headers(body))

    @extend_schema(
        summary="Cancel a task",
        tags=["tasks"],
        description="A task cancelled before its pipeline started costs nothing; one cancelled while "
        "running pays for the steps it ran (`credits_charged`; docs/api.md).",
        responses={200: TaskSerializer, **errors(400, 404, *AUTH_ERRORS)},
    )
    def destroy(self, request: Request, task_id: str) -> Response:
        job = self._job(request, task_id)
        if job.status in Job.TERMINAL:
            raise InvalidRequest(
                f"The task is already {job.status} and cannot be cancelled.", param="id", code="task_not_cancellable"
            )
        job_services.job_cancel(job=job)
        job = Job.objects.select_related("model", "hold").get(pk=job.pk)
        return Response(task_body(job=job, base_url=base_url(request)))


class TaskWait(DeferredResponse):
    """A long poll (`?wait=N`) under ASGI: woken by the job's status changes or events
    (images.notify), without a thread; then the task is read again on a thread."""

    def __init__(self, *, view: TaskViewSet, request: Request, task_id: str, caller, seen, wait: int) -> None:
        super().__init__(status=202)
        self.view, self.drf_request, self.task_id, self.caller = view, request, task_id, caller
        self.seen, self.wait_seconds = seen, wait

    async def wait(self) -> None:
        from images import notify

        async with notify.job_events(self.task_id) as events:
            # Subscribed first, then compared: a write in between is not missed.
            if await run_sync(task_status.task_status_read, job_id=self.task_id) != self.seen:
                return
            try:
                await asyncio.wait_for(events.get(), self.wait_seconds)
            except TimeoutError:
                pass

    def finish(self, outcome: None) -> HttpResponse:
        try:
            body, _ = self.view._task(self.drf_request, self.task_id, self.caller)
            response = self.view._task_response(body)
        except Exception as exc:
            response = self.view.handle_exception(exc)
        return response_rendered(self.view, self.drf_request, response)
