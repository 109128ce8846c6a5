"""The charged flow every paid endpoint shares (OpenAI's generations, edits and
variations in images/api.py; the vendor shapes in images/vendors.py, images/stability.py
and images/midjourney.py; the playground in dashboard/playground.py): each is a *mapper*
(request -> a `GenerationRequest`) and a *renderer* (job -> response) around
`ChargedViewSet.charged`: Idempotency-Key handling, `generation_create` (every rule
lives there), then waiting, streaming or answering 202. Views never decide anything
about models, money or limits.

Waiting (core/waiting.py). Under the ASGI server the flow above runs on a thread up to
the wait; then the view returns a `JobWait` (a DeferredResponse: the job id, the
renderer, what Idempotency-Key still has to record), which the handler awaits on the
event loop (no thread, no connection) and renders on a thread again; streams are async
iterators. Under WSGI (gthread, Django's test client) the same code waits on its thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.principals import Caller, tenant_active_check
from accounts.ratelimit import caller_from_request
from billing.selectors import credits_available
from core import idempotency
from core.errors import APIError, NotFound, PermissionDeniedError, ServiceUnavailable
from core.waiting import (
    AsgiClientWatch,
    ClientDisconnected,
    ClientWatch,
    DeferredResponse,
    client_watch_of,
    request_is_asgi,
    waiting_slot_take,
)
from images import selectors
from images.errors import job_error
from images.fields import cancel_after_parse
from images.files import (
    StorageUnavailable,
)
from images.models import Job
from images.serializers import (
    images_response_body,
    task_body,
)
from images.services import jobs as job_services
from images.services.generation import GenerationRequest, generation_create
from images.streaming import sse_response


class PaidResultUnavailable(ServiceUnavailable):
    """503 for a succeeded, charged job whose images cannot be read at the moment."""

    code = "storage_unavailable"
    should_retry = False  # a retry would submit (and charge) a second job


class JobWaitTimeout(APIError):
    status_code = 504
    type = "server_error"
    code = "job_wait_timeout"
    should_retry = False  # a retry would submit (and charge) a second job


# ---- Rendering -------------------------------------------------------------------------


@dataclass(frozen=True)
class Renderer:
    """How an endpoint answers: `body(request, job)` renders a succeeded job (through an
    output serializer); `stream_prefix` names its SSE events; `always_async` answers
    every submission with 202 and the task (the playground)."""

    body: Callable[[Request, Job], dict[str, Any]]
    stream_prefix: str = "image_generation"
    always_async: bool = False
    # The answer to an asynchronous submission; None: 202 with the task. A vendor shape
    # whose submit answers its own way (the Midjourney proxy's `{code: 1, result: id}`,
    # images/midjourney.py) gives it; a 200 is kept for the Idempotency-Key's replays.
    accepted: Callable[[Request, Job], Response] | None = None


def base_url(request: Request) -> str:
    return request.build_absolute_uri("/")


def openai_images_body(request: Request, job: Job) -> dict[str, Any]:
    return images_response_body(job=job, base_url=base_url(request))


OPENAI_GENERATION = Renderer(body=openai_images_body)
OPENAI_EDIT = Renderer(body=openai_images_body, stream_prefix="image_edit")


def credit_headers(job: Job) -> dict[str, str]:
    hold = getattr(job, "hold", None)  # (None without one: the reverse accessor raises an AttributeError)
    return {
        "x-credits-charged": str(hold.captured if hold else 0),
        "x-credits-remaining": str(credits_available(tenant_id=job.tenant_id)),
    }


def job_result_response(*, job: Job, request: Request, renderer: Renderer) -> Response:
    """The answer for a job of a synchronous request: the rendered images, or the error
    for how it ended (`images.errors.job_error`: a cancelled or timed-out job is a
    non-retryable 410), with the credit headers either way."""
    if job.status == Job.Status.SUCCEEDED:
        try:
            body = renderer.body(request, job)
        except StorageUnavailable as exc:
            # Paid for and made, but unreadable right now: a retry of the POST would be a
            # second, charged job, so the SDK is told not to retry; the task, or the same
            # request with its Idempotency-Key, reads it once the store is back.
            raise PaidResultUnavailable(
                f"Your images are made and charged (job {job.pk}) but cannot be read right now: {exc.message} "
                f"Read them with GET /v1/images/tasks/{job.pk}, or repeat this request with the same "
                "Idempotency-Key.",
                headers={"Retry-After": "5"},
            ) from exc
        return Response(body, headers=credit_headers(job))
    error = job_error(job=job)
    if error is not None:  # ended without images: one error per outcome (images/errors.py)
        error.headers.update(credit_headers(job))
        raise error
    raise JobWaitTimeout(
        f"The image is still being generated (job {job.pk}, status {job.status}) after "
        f"{int(settings.JOB_WAIT_SECONDS)} s; it will be charged when it completes."
    )


def _replayable_headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.items() if k.lower().startswith(("x-credits", "x-should-retry", "retry-after"))}


def _wants_stream(data: Any) -> bool:
    value = data.get("stream") if hasattr(data, "get") else None
    return value is True or (isinstance(value, str) and value.lower() == "true")


# ---- The charged flow --------------------------------------------------------------------

Mapper = Callable[[Request], GenerationRequest]


class ChargedViewSet(viewsets.ViewSet):
    """Base of every endpoint that creates a paid job. Subclasses pass a mapper and a
    renderer to `charged`."""

    def caller(self, request: Request) -> Caller:
        caller = caller_from_request(request)
        if caller is None:
            raise PermissionDeniedError(
                "Only members of an organization may generate images.", code="permission_denied"
            )
        return caller

    def charged(self, request: Request, mapper: Mapper, renderer: Renderer) -> Response:
        """A request that will wait for its job (synchronous or streamed) first takes one
        of this process's waiting places (core/waiting.py: 503 `server_busy` at once past
        WEB_MAX_WAITING, before anything is held); it is given back when the answer is
        made, or when a stream is closed."""
        caller = self.caller(request)
        waits = not renderer.always_async and (
            _wants_stream(request.data) or "respond-async" not in request.headers.get("Prefer", "")
        )
        slot = waiting_slot_take() if waits else None
        client = client_watch_of(request)
        response = None
        try:
            response = self._charged(request, caller, mapper, renderer, client)
            return response
        finally:
            if slot is not None and isinstance(response, DeferredResponse):
                response.slot = slot  # given back by WaitingMiddleware after the wait
                client.handoff(slot.release)  # (or now / when the client leaves first)
            elif slot is not None and getattr(response, "streaming", False):
                slot.release_when_closed(response)
            elif slot is not None:
                slot.release()

    def _charged(
        self, request: Request, caller: Caller, mapper: Mapper, renderer: Renderer, client: ClientWatch
    ) -> Response:
        """Idempotency-Key (Stripe's semantics, core/idempotency.py) around one submission."""
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return self._submit(request, caller, mapper, renderer, None, client)
        fingerprint = idempotency.request_fingerprint(
            method=request.method, path=request.path, data=request.data, files=request.FILES
        )
        mode = "event-stream" if _wants_stream(request.data) and not renderer.always_async else "json"
        record, is_new = idempotency.idempotency_begin(
            scope=caller.idempotency_scope, key=key, fingerprint=fingerprint, mode=mode
        )
        if not is_new:
            return self._replay(request, record, renderer)
        try:
            response = self._submit(request, caller, mapper, renderer, record.pk, client)
        except Exception as exc:  # rendered here so that the answer can be recorded
            response = self.handle_exception(exc)
        if isinstance(response, JobWait):
            response.record = record  # recorded after the wait (JobWait.finish)
            return response
        return self._record_answer(record, response)

    def _record_answer(self, record, response):
        """Keep the first answer for the Idempotency-Key's replays (or forget the key)."""
        try:
            record.refresh_from_db(fields=["job_id"])
        except type(record).DoesNotExist:
            return response  # forgotten: its client left before the job started (jobs.job_abandon)
        if getattr(response, "streaming", False):
            return response  # replays re-stream the finished job (see _replay)
        if record.job_id is None:
            # Nothing started (validation, 402, 429, 503...): keep no result, as Stripe does.
            idempotency.idempotency_abandon(record=record)
        elif response.status_code not in (202, 503, JobWaitTimeout.status_code, ClientDisconnected.status_code):
            # (202, 504 and 499: still running; 503: the store was away. Replays render the job again.)
            idempotency.idempotency_complete(
                record=record, status=response.status_code, body=response.data, headers=_replayable_headers(response)
            )
        return response

    def _submit(
        self,
        request: Request,
        caller: Caller,
        mapper: Mapper,
        renderer: Renderer,
        record_id: int | None,
        client: ClientWatch,
    ) -> Response:
        generation = mapper(request)
        generation.cancel_after = cancel_after_parse(request.headers.get("Cancel-After"))  # (issue 24)
        generation.idempotency_record_id = record_id
        generation.client_gone = client.gone  # a client already gone is charged nothing
        job = generation_create(caller=caller, request=generation)
        if caller.ratelimit_headers:
            request._request.ratelimit_headers = caller.ratelimit_headers
        if renderer.always_async or "respond-async" in request.headers.get("Prefer", ""):
            if renderer.accepted is not None:
                return renderer.accepted(request, job)
            body = task_body(job=job, base_url=base_url(request))
            location = request.build_absolute_uri(f"/v1/images/tasks/{job.pk}")
            return Response(body, status=202, headers={"Location": location, "Preference-Applied": "respond-async"})
        if isinstance(client, AsgiClientWatch):
            # ASGI: wait without a thread. If the client leaves from now on (or has left
            # already), a job not yet started is abandoned: cancelled, nothing charged.
            client.handoff(lambda: job_services.job_abandon(job_id=job.pk))
            if job.params.get("stream"):
                return sse_response(job=job, prefix=renderer.stream_prefix, asynchronous=True)
            return JobWait(view=self, request=request, renderer=renderer, job_id=job.pk)
        if job.params.get("stream"):
            return sse_response(job=job, prefix=renderer.stream_prefix, client_gone=client.gone)
        job = job_services.job_wait(job_id=job.pk, timeout=settings.JOB_WAIT_SECONDS, client_gone=client.gone)
        if client.left:
            # Not started: cancelled and free (job_abandon). Started: it runs on and is
            # charged; its Idempotency-Key or its task reads it. The answer goes nowhere.
            raise ClientDisconnected(f"The client disconnected while waiting for job {job.pk} ({job.status}).")
        return job_result_response(job=job, request=request, renderer=renderer)

    def _replay(self, request: Request, record, renderer: Renderer):
        """The first request's answer, charging nothing: a stored body, or the finished
        job rendered again in the mode that was asked (JSON, or an event stream)."""
        job = Job.objects.select_related("model", "hold").filter(pk=record.job_id).first() if record.job_id else None
        finished = job is not None and job.status in Job.TERMINAL
        if renderer.accepted is not None and job is not None:
            response = renderer.accepted(request, job)  # (a shape whose submission answers at once, again)
        elif record.mode == "event-stream" and finished:
            response = sse_response(job=job, prefix=renderer.stream_prefix, asynchronous=request_is_asgi(request))
        elif record.status == record.Status.COMPLETED and record.response_body is not None:
            response = Response(record.response_body, status=record.response_status, headers=record.response_headers)
        elif finished:
            try:
                response = job_result_response(job=job, request=request, renderer=renderer)
            except APIError as exc:
                response = self.handle_exception(exc)
            if record.status != record.Status.COMPLETED and response.status_code != 503:
                idempotency.idempotency_complete(
                    record=record,
                    status=response.status_code,
                    body=response.data,
                    headers=_replayable_headers(response),
                )
        else:
            job_note = f" (job {record.job_id})" if record.job_id else ""
            raise idempotency.IdempotencyConflict(
                f"A request with this Idempotency-Key is still being processed{job_note}; retry shortly.",
                headers={"Retry-After": "2"},
            )
        response["Idempotent-Replayed"] = "true"
        return response


class JobWait(DeferredResponse):
    """A synchronous request's answer under ASGI once its job is submitted: awaited by
    WaitingMiddleware (images.services.jobs.job_wait_async), then rendered on a thread
    exactly as the thread-bound path renders it (job_result_response, the DRF
    exception handler, the Idempotency-Key's record)."""

    def __init__(self, *, view: ChargedViewSet, request: Request, renderer: Renderer, job_id: Any) -> None:
        super().__init__(status=202)
        self.view, self.drf_request, self.renderer, self.job_id = view, request, renderer, job_id
        self.record = None

    async def wait(self) -> bool:
        return await job_services.job_wait_async(job_id=self.job_id, timeout=settings.JOB_WAIT_SECONDS)

    def finish(self, outcome: bool) -> HttpResponse:
        view, request = self.view, self.drf_request
        job = Job.objects.select_related("model", "hold").get(pk=self.job_id)
        try:
            response = job_result_response(job=job, request=request, renderer=self.renderer)
        except Exception as exc:
            response = view.handle_exception(exc)
        if self.record is not None:
            response = view._record_answer(self.record, response)
        return response_rendered(view, request, response)


def response_rendered(view: viewsets.ViewSet, request: Request, response: Response) -> HttpResponse:
    """What DRF's dispatch does to a view's answer, for one made after a wait."""
    response = view.finalize_response(request, response)
    if hasattr(response, "render"):
        response.render()
    return response


# ---- The caller's tasks ------------------------------------------------------------------


def active_caller(request: Request) -> Caller | None:
    """The request's caller (a key or a member's session), refused with TenantSuspended
    when its organization is suspended; None for an anonymous request."""
    caller = caller_from_request(request)
    if caller is not None:  # (keys are refused at authentication already; sessions here)
        tenant_active_check(tenant=caller.tenant)
    return caller


def tenant_job(request: Request, task_id: str) -> Job:
    """The caller's tenant's job, or 404 (another tenant's job looks exactly like a missing one)."""
    caller = active_caller(request)
    job = selectors.job_get(tenant=caller.tenant, job_id=task_id) if caller else None
    if job is None:
        raise NotFound("No such task.", param="id", code="not_found")
    return job
