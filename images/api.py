"""HTTP adapters for the Images API, as DRF ViewSets on a router (platform/api_router.py).

Every charged endpoint (OpenAI's generations, edits and variations; the vendor shapes
in images/vendors.py; the playground in dashboard/playground.py) is a *mapper* (request -> a
`GenerationRequest`) and a *renderer* (job -> response) around the same flow,
`ChargedViewSet.charged`: Idempotency-Key handling, `generation_create` (every rule
lives there), then waiting, streaming or answering 202. Views never decide anything
about models, money or limits.

Waiting (core/waiting.py). Under the ASGI server the flow above runs on a thread up to
the wait; then the view returns a `JobWait` (a DeferredResponse: the job id, the
renderer, what Idempotency-Key still has to record), which WaitingMiddleware awaits
on the event loop (no thread, no connection) and renders on a thread again; streams
are async iterators; a long poll of a task (`?wait=N`) is a `TaskWait`. Under WSGI
(gthread, Django's test client) the same code waits on its thread, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.principals import Caller, tenant_active_check
from accounts.ratelimit import caller_from_request
from billing.selectors import credits_available
from core import idempotency
from core.errors import APIError, InvalidRequest, NotFound, PermissionDeniedError, ServiceUnavailable
from core.schema import AUTH_ERRORS, CHARGED_ERRORS, errors
from core.waiting import (
    AsgiClientWatch,
    ClientDisconnected,
    ClientWatch,
    DeferredResponse,
    ServerBusy,
    client_watch_of,
    request_is_asgi,
    run_sync,
    waiting_slot_take,
)
from images import selectors, task_status
from images.errors import job_error
from images.files import (
    StorageUnavailable,
    image_presigned_url,
    image_read,
    image_token_read_with_age,
    storage_is_remote,
)
from images.models import Job
from images.serializers import (
    ImagesResponseSerializer,
    ModelListSerializer,
    ModelSerializer,
    TaskSerializer,
    images_response_body,
    model_body,
    model_list_body,
    task_body,
    task_body_from_status,
)
from images.services import jobs as job_services
from images.services.generation import GenerationRequest, generation_create
from images.services.inputs import InputImage
from images.streaming import sse_response
from images.validation import (
    EditJSONRequestSerializer,
    EditRequestSerializer,
    GenerationRequestSerializer,
    VariationRequestSerializer,
    cancel_after_parse,
)


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
        return _rendered(view, request, response)


def _rendered(view: viewsets.ViewSet, request: Request, response: Response) -> HttpResponse:
    """What DRF's dispatch does to a view's answer, for one made after a wait."""
    response = view.finalize_response(request, response)
    if hasattr(response, "render"):
        response.render()
    return response


# ---- Request mappers (parse only) ----------------------------------------------------------


def _is_form(request: Request) -> bool:
    return hasattr(request.data, "lists")


def form_fields(request: Request, *, files: tuple[str, ...] = ("image", "mask")) -> dict[str, Any]:
    """Multipart/form fields as a plain dict (first value of each), file parts left out.
    A file part under any other name is an unknown parameter."""
    data = request.data
    for name in request.FILES:
        # `image`, `image[]` and `image[0]`... for the image list (clients differ); `mask` as is.
        allowed = name in files or (name.startswith("image[") and "image" in files)
        if not allowed:
            raise InvalidRequest(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    if _is_form(request):
        for name, values in data.lists():
            if len(values) > 1 and name not in request.FILES:
                raise InvalidRequest(
                    f"The parameter '{name}' was sent more than once.", param=name, code="duplicate_parameter"
                )
    if not _is_form(request):
        return dict(data) if isinstance(data, dict) else data
    return {k: v[0] for k, v in data.lists() if k not in request.FILES and k.split("[", 1)[0] not in files}


def uploads(request: Request, name: str) -> list:
    files = request.FILES.getlist(name) + request.FILES.getlist(f"{name}[]")
    for key in request.FILES:  # some clients send image[0], image[1] ...
        if key.startswith(f"{name}[") and key != f"{name}[]":
            files += request.FILES.getlist(key)
    return files


def validated(serializer_class, data: Any, *, form: bool = False) -> dict[str, Any]:
    serializer = serializer_class(data=data, context={"form": form})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def generation_mapper(request: Request) -> GenerationRequest:
    """POST /v1/images/generations: JSON (or a form) with CreateImageRequest's fields."""
    form = _is_form(request)
    fields = validated(GenerationRequestSerializer, form_fields(request, files=()) if form else request.data, form=form)
    return GenerationRequest(endpoint="/v1/images/generations", fields=fields)


def _reference(item: dict[str, Any], param: str) -> InputImage:
    if "file_id" in item:
        raise InvalidRequest(
            "File ids are not supported here; send the image as an 'image_url' (a data URL or an https URL).",
            param=param,
            code="unsupported_parameter",
        )
    return InputImage(param=param, reference=item["image_url"])


def edit_mapper(request: Request) -> GenerationRequest:
    """POST /v1/images/edits: multipart (`image`/`image[]` files, `mask`) or, for GPT
    image models, JSON with `images: [{image_url}]` and `mask: {image_url}` (reference §3)."""
    if not _is_form(request) and isinstance(request.data, dict):
        fields = validated(EditJSONRequestSerializer, request.data)
        images = [_reference(item, "images") for item in fields.pop("images")]
        mask = fields.pop("mask", None)
        return GenerationRequest(
            endpoint="/v1/images/edits",
            kind=Job.Kind.EDIT,
            fields=fields,
            images=images,
            mask=_reference(mask, "mask") if mask else None,
            json_references=True,
        )
    fields = validated(EditRequestSerializer, form_fields(request), form=True)
    return _with_uploads(request, endpoint="/v1/images/edits", kind=Job.Kind.EDIT, fields=fields)


def _with_uploads(request: Request, *, endpoint: str, kind: str, fields: dict[str, Any]) -> GenerationRequest:
    """A request whose images are the multipart `image` parts (and `mask`), not yet read."""
    mask_file = request.FILES.get("mask")
    return GenerationRequest(
        endpoint=endpoint,
        kind=kind,
        fields=fields,
        images=[InputImage(param="image", upload=f) for f in uploads(request, "image")],
        mask=InputImage(param="mask", upload=mask_file) if mask_file else None,
    )


def variation_mapper(request: Request) -> GenerationRequest:
    """POST /v1/images/variations: multipart with one `image`."""
    fields = validated(VariationRequestSerializer, form_fields(request), form=_is_form(request))
    return _with_uploads(request, endpoint="/v1/images/variations", kind=Job.Kind.VARIATION, fields=fields)


# ---- Schema helpers ------------------------------------------------------------------------

IDEMPOTENCY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="Replays the first answer for 24 hours instead of charging twice",
)
PREFER = OpenApiParameter(
    "Prefer",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="`respond-async`: answer 202 with the task at once",
)
ASYNC_202 = {202: OpenApiResponse(TaskSerializer, description="Accepted (Prefer: respond-async); poll the task")}
STREAM = OpenApiResponse(
    ImagesResponseSerializer, description="The images; with `stream: true` a text/event-stream instead (reference §7)"
)


CANCEL_AFTER = OpenApiParameter(
    "Cancel-After",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="A deadline (`30s`, `5m`, `1h`, `1m30s`): a job not finished by then is cancelled by the "
    "cancel rules (free if it had not started, else the steps run are charged), its task `cancelled` with "
    "`cancel_after_exceeded` (docs/api.md, issue 24)",
)


def charged_schema(summary: str, *, request, response=STREAM, tags=("images",), error_serializer=None, **kwargs):
    error_responses = (
        errors(*CHARGED_ERRORS) if error_serializer is None else errors(*CHARGED_ERRORS, serializer=error_serializer)
    )
    return extend_schema(
        summary=summary,
        tags=list(tags),
        request=request,
        parameters=[IDEMPOTENCY, PREFER, CANCEL_AFTER],
        responses={200: response, **ASYNC_202, **error_responses},
        **kwargs,
    )


class EditFormSchema(serializers.Serializer):
    """The multipart edit body as the schema shows it (files are read by the mapper)."""

    image = serializers.ListField(child=serializers.FileField(), help_text="`image` or `image[]`: up to 16 files")
    mask = serializers.FileField(required=False)
    prompt = serializers.CharField()
    model = serializers.CharField(required=False)
    n = serializers.IntegerField(required=False, min_value=1, max_value=10)
    size = serializers.CharField(required=False)
    quality = serializers.CharField(required=False)
    response_format = serializers.ChoiceField(choices=["url", "b64_json"], required=False)
    background = serializers.ChoiceField(choices=["transparent", "opaque", "auto"], required=False)
    output_format = serializers.ChoiceField(choices=["png", "jpeg", "webp"], required=False)
    output_compression = serializers.IntegerField(required=False, min_value=0, max_value=100)
    input_fidelity = serializers.ChoiceField(choices=["low", "high"], required=False)
    stream = serializers.BooleanField(required=False)
    partial_images = serializers.IntegerField(required=False, min_value=0, max_value=3)
    user = serializers.CharField(required=False)
    seed = serializers.IntegerField(required=False, min_value=0)
    negative_prompt = serializers.CharField(required=False)


class VariationFormSchema(serializers.Serializer):
    image = serializers.FileField(help_text="A square PNG under 4 MB")
    model = serializers.CharField(required=False)
    n = serializers.IntegerField(required=False, min_value=1, max_value=10)
    size = serializers.CharField(required=False)
    response_format = serializers.ChoiceField(choices=["url", "b64_json"], required=False)
    user = serializers.CharField(required=False)
    seed = serializers.IntegerField(required=False, min_value=0)


EXAMPLE = OpenApiExample(
    "dall-e-2", value={"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256"}, request_only=True
)


# ---- ViewSets --------------------------------------------------------------------------------


class ImagesViewSet(ChargedViewSet):
    """/v1/images/generations, /v1/images/edits, /v1/images/variations (reference §2-§4)."""

    @charged_schema("Create an image", request=GenerationRequestSerializer, examples=[EXAMPLE])
    @action(detail=False, methods=["post"])
    def generations(self, request: Request) -> Response:
        return self.charged(request, generation_mapper, OPENAI_GENERATION)

    @charged_schema(
        "Edit images", request={"multipart/form-data": EditFormSchema, "application/json": EditJSONRequestSerializer}
    )
    @action(detail=False, methods=["post"])
    def edits(self, request: Request) -> Response:
        return self.charged(request, edit_mapper, OPENAI_EDIT)

    @charged_schema(
        "Create a variation", request={"multipart/form-data": VariationFormSchema}, response=ImagesResponseSerializer
    )
    @action(detail=False, methods=["post"])
    def variations(self, request: Request) -> Response:
        return self.charged(request, variation_mapper, OPENAI_GENERATION)


def _active_caller(request: Request) -> Caller | None:
    caller = caller_from_request(request)
    if caller is not None:  # (keys are refused at authentication already; sessions here)
        tenant_active_check(tenant=caller.tenant)
    return caller


def tenant_job(request: Request, task_id: str) -> Job:
    """The caller's tenant's job, or 404 (another tenant's job looks exactly like a missing one)."""
    caller = _active_caller(request)
    job = selectors.job_get(tenant=caller.tenant, job_id=task_id) if caller else None
    if job is None:
        raise NotFound("No such task.", param="id", code="not_found")
    return job


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
        caller = _active_caller(request)
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
        headers = {} if body["status"] in Job.TERMINAL else {"Retry-After": str(TASK_RETRY_AFTER)}
        return Response(body, headers=headers)

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
        return _rendered(self.view, self.drf_request, response)


class ImageModelViewSet(viewsets.ViewSet):
    """GET /v1/models and /v1/models/{id}. Ids contain dots (`gpt-image-1.5`)."""

    lookup_field = "model_id"
    lookup_value_regex = "[^/]+"

    @extend_schema(summary="List models", tags=["models"], responses={200: ModelListSerializer, **errors(*AUTH_ERRORS)})
    def list(self, request: Request) -> Response:
        return Response(model_list_body(selectors.image_model_list()))

    @extend_schema(
        summary="Read a model",
        tags=["models"],
        operation_id="v1_models_get",
        responses={200: ModelSerializer, **errors(404, *AUTH_ERRORS)},
    )
    def retrieve(self, request: Request, model_id: str) -> Response:
        model = selectors.image_model_get(public_id=model_id)
        if model is None:
            raise NotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return Response(model_body(model))


class ImageFileViewSet(viewsets.ViewSet):
    """GET /v1/files/{token}: a signed link, readable without the API key (like the
    vendors' CDN links). Tampered, expired or foreign tokens are a plain 404."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []
    lookup_field = "token"
    lookup_value_regex = "[^/]+"

    @extend_schema(
        summary="Download an image by its signed link",
        tags=["images"],
        auth=[],
        responses={
            (200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="PNG, JPEG or WebP bytes"),
            302: OpenApiResponse(
                description="With object storage: a redirect to a presigned "
                "URL of the image, valid for the rest of the hour"
            ),
            **errors(404, 405, 503),
        },
    )
    def retrieve(self, request: Request, token: str) -> HttpResponse:
        """Local storage: the bytes. An object store: a 302 to a presigned URL of the
        object, valid for what is left of the token's hour (images/files.py says why),
        or the bytes streamed from the store when S3_PRESIGNED_REDIRECT is off."""
        found = image_token_read_with_age(token)
        image = selectors.image_get(tenant_id=found[1], image_id=found[0]) if found else None
        if image is None:
            raise NotFound("The requested image was not found or its link has expired.", code="not_found")
        if storage_is_remote() and settings.S3_PRESIGNED_REDIRECT:
            response = HttpResponseRedirect(image_presigned_url(image.file, expires_in=int(found[2])))
            response["Cache-Control"] = "private, no-store"
            return response
        try:
            handle = default_storage.open(image.file, "rb")
        except Exception as exc:
            if isinstance(exc, FileNotFoundError) or getattr(exc, "response", None):
                image_read(image)  # raises ImagesExpired (gone) or StorageUnavailable (away)
            raise StorageUnavailable(
                "The image store is unavailable; retry shortly.", headers={"Retry-After": "5"}
            ) from exc
        response = FileResponse(handle, content_type=image.content_type)
        response["Cache-Control"] = "private, max-age=3600"
        return response


class UnknownRouteView(APIView):
    """Anything else under /v1 and /api: a 404 in the envelope."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs
        self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        exc = NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
        response = self.handle_exception(exc)
        self.response = self.finalize_response(self.request, response, *args, **kwargs)
        return self.response


extend_schema(exclude=True)(UnknownRouteView)
