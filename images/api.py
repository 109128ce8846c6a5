"""HTTP adapters for the Images API: parse, call one service, render."""
from __future__ import annotations

import base64
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest
from django.core.files.storage import default_storage
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import ServiceUnavailable, APIError, InvalidRequest, NotFound, PermissionDeniedError, UpstreamError
from accounts.models import APIKey
from core import idempotency
from billing.models import CreditAccount
from images import selectors
from images.services import generation as services_generation, jobs as services_jobs, moderation as services_moderation
from images.files import image_read, image_token_read, image_url
from images.models import ImageModel, Job
from images.profiles import PROFILES, output_tokens
from images.streaming import sse_response
from images.validation import GPT_ONLY, GenerationRequestSerializer, generation_params_resolve

DEFAULT_MODEL = "dall-e-2"
DEFAULT_GPT_MODEL = "gpt-image-1"


class JobWaitTimeout(APIError):
    status_code = 504
    type = "server_error"
    code = "job_wait_timeout"
    should_retry = False  # a retry would submit (and charge) a second job


def model_for_request(*, data: dict[str, Any], api_key: APIKey | None, default: str = DEFAULT_MODEL) -> ImageModel:
    """The requested model, or the default ('dall-e-2' unless a GPT-image parameter is used)."""
    public_id = data.get("model")
    if not public_id:
        gpt_used = any(data.get(name) not in (None, False) for name in GPT_ONLY)
        public_id = DEFAULT_GPT_MODEL if gpt_used and default == DEFAULT_MODEL else default
    model = selectors.image_model_get(public_id=public_id)
    if model is None:
        raise InvalidRequest(f"The model '{public_id}' does not exist or you do not have access to it.",
                             param="model", code="model_not_found")
    if api_key is not None and api_key.allowed_models and public_id not in api_key.allowed_models:
        raise PermissionDeniedError(f"This API key may not use the model '{public_id}'.", param="model",
                                    code="model_not_allowed")
    return model


def usage_body(job: Job) -> dict[str, Any]:
    """GPT-image `usage`: input = the prompt's tokens as the model's tokenizer counted
    them; output = OpenAI's per-image token table for the size and quality, times n."""
    text_tokens = job.prompt_tokens or 0
    out = output_tokens(job.size, job.params["quality"]) * job.images.count()
    return {"input_tokens": text_tokens, "output_tokens": out, "total_tokens": text_tokens + out,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0}}


def images_response_body(*, job: Job, base_url: str) -> dict[str, Any]:
    """ImagesResponse (reference §6): DALL·E profiles get created+data only; GPT-image
    ones also the resolved size/quality/background/output_format and usage."""
    params = job.params
    profile = PROFILES[params["profile"]]
    data = []
    for image in job.images.all():
        item: dict[str, Any] = {}
        if params["response_format"] == "url":
            item["url"] = image_url(image, base_url=base_url)
        else:
            item["b64_json"] = base64.b64encode(image_read(image)).decode("ascii")
        if profile.style:
            item["revised_prompt"] = job.prompt
        data.append(item)
    body: dict[str, Any] = {"created": int(job.created_at.timestamp()), "data": data}
    if profile.gpt:
        body.update(background=params["background"], output_format=params["output_format"],
                    size=params["size"], quality=params["quality"], usage=usage_body(job))
    return body


def credit_headers(job: Job) -> dict[str, str]:
    charged = job.hold.captured if hasattr(job, "hold") else 0
    account = CreditAccount.objects.filter(tenant_id=job.tenant_id).first()
    remaining = account.available if account else 0
    return {"x-credits-charged": str(charged), "x-credits-remaining": str(remaining)}


def job_result_response(*, job: Job, request: Request, render=None) -> Response:
    """The response for a finished (or still running) job of a synchronous request."""
    if job.status == Job.Status.SUCCEEDED:
        if render is not None:
            response = render(request, job)
            for key, value in credit_headers(job).items():
                response[key] = value
            return response
        body = images_response_body(job=job, base_url=request.build_absolute_uri("/"))
        return Response(body, headers=credit_headers(job))
    if job.status in (Job.Status.FAILED, Job.Status.CANCELLED):
        if job.error_code == "service_unavailable":
            raise ServiceUnavailable(job.error_message, headers={"Retry-After": "5"})
        raise UpstreamError(f"{job.error_message} (job {job.pk}; nothing was charged)", code=job.error_code or None)
    raise JobWaitTimeout(
        f"The image is still being generated (job {job.pk}, status {job.status}) after "
        f"{int(settings.JOB_WAIT_SECONDS)} s; it will be charged when it completes.")


class ChargedView(APIView):
    """A POST that creates a paid job; honours `Idempotency-Key` (billing/idempotency.py)."""

    endpoint = ""

    def submit(self, request: Request, idempotency_record_id: int | None) -> Response:
        raise NotImplementedError

    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return self.submit(request, None)
        fingerprint = idempotency.request_fingerprint(method=request.method, path=request.path,
                                                      data=request.data, files=request.FILES)
        record, is_new = idempotency.idempotency_begin(scope=f"tenant:{request.auth.tenant.pk}", key=key, fingerprint=fingerprint)
        if not is_new:
            return self.replay(request, record)
        try:
            response = self.submit(request, record.pk)
        except Exception as exc:  # rendered here so that the answer can be recorded
            response = self.handle_exception(exc)
        record.refresh_from_db(fields=["job_id"])
        if getattr(response, "streaming", False):
            return response  # left in progress; a repeat replays the finished job as JSON
        if record.job_id is None:
            # Nothing started (validation, 402, 429, 503...): keep no result, as Stripe does.
            idempotency.idempotency_abandon(record=record)
        elif response.status_code not in (202, JobWaitTimeout.status_code):  # still running: replay later
            idempotency.idempotency_complete(record=record, status=response.status_code, body=response.data,
                                             headers=_replayable_headers(response))
        return response

    stream_prefix = "image_generation"

    def respond(self, request: Request, job: Job) -> Response:
        """Wait and answer, stream events (`stream: true`), or answer 202 at once for
        `Prefer: respond-async`."""
        if job.params.get("stream"):
            return sse_response(job=job, prefix=self.stream_prefix)
        if "respond-async" in request.headers.get("Prefer", ""):
            body = task_object(job=job, base_url=request.build_absolute_uri("/"))
            location = request.build_absolute_uri(f"/v1/images/tasks/{job.pk}")
            return Response(body, status=202, headers={"Location": location, "Preference-Applied": "respond-async"})
        job = services_jobs.job_wait(job_id=job.pk, timeout=settings.JOB_WAIT_SECONDS)
        return job_result_response(job=job, request=request, render=getattr(self, "render", None))

    def replay(self, request: Request, record) -> Response:
        if record.status == record.Status.COMPLETED and record.response_body is not None:
            response = Response(record.response_body, status=record.response_status, headers=record.response_headers)
        elif record.job_id is not None and Job.objects.filter(pk=record.job_id, status__in=Job.TERMINAL).exists():
            job = Job.objects.select_related("model").get(pk=record.job_id)
            try:
                response = job_result_response(job=job, request=request, render=getattr(self, "render", None))
            except APIError as exc:
                response = self.handle_exception(exc)
            if record.status != record.Status.COMPLETED:
                idempotency.idempotency_complete(record=record, status=response.status_code, body=response.data,
                                                 headers=_replayable_headers(response))
        else:
            job_note = f" (job {record.job_id})" if record.job_id else ""
            raise idempotency.IdempotencyConflict(
                f"A request with this Idempotency-Key is still being processed{job_note}; retry shortly.",
                headers={"Retry-After": "2"})
        response["Idempotent-Replayed"] = "true"
        return response


def _replayable_headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.items() if k.lower().startswith(("x-credits", "x-should-retry", "retry-after"))}


class ImageGenerationView(ChargedView):
    """POST /v1/images/generations"""

    endpoint = "/v1/images/generations"

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        """Vendor adapters fill their own defaults here."""
        return data

    def render(self, request: Request, job: Job) -> Response:
        return Response(images_response_body(job=job, base_url=request.build_absolute_uri("/")),
                        headers=credit_headers(job))

    def submit(self, request: Request, idempotency_record_id: int | None) -> Response:
        raw = request.data
        serializer = GenerationRequestSerializer(data=self.prepare(raw) if isinstance(raw, dict) else raw)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        model = model_for_request(data=data, api_key=request.auth)
        params = generation_params_resolve(data=data, model=model)
        services_moderation.prompt_moderate(tenant=request.auth.tenant, api_key=request.auth, model=model, prompt=params.prompt,
                                 requested=params.moderation, endpoint=self.endpoint,
                                 request_id=getattr(request._request, "request_id", ""))
        job = services_generation.generation_submit(tenant=request.auth.tenant, api_key=request.auth, model=model,
                                         params=params, endpoint=self.endpoint,
                                         idempotency_record_id=idempotency_record_id)
        return self.respond(request, job)



def model_object(model: ImageModel) -> dict[str, Any]:
    return {"id": model.public_id, "object": "model", "created": int(model.created_at.timestamp()),
            "owned_by": model.owned_by}


class ModelListView(APIView):
    """GET /v1/models"""

    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [model_object(m) for m in selectors.image_model_list()]})


class ModelDetailView(APIView):
    """GET /v1/models/{id}"""

    def get(self, request: Request, model_id: str) -> Response:
        model = selectors.image_model_get(public_id=model_id)
        if model is None:
            raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return Response(model_object(model))


class ImageFileView(APIView):
    """GET /v1/files/{token}: a signed link, readable without the API key (like the
    vendors' CDN links). Tampered, expired or foreign tokens are a plain 404."""

    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request: Request, token: str) -> FileResponse:
        found = image_token_read(token)
        image = selectors.image_get(tenant_id=found[1], image_id=found[0]) if found else None
        if image is None or not default_storage.exists(image.file):
            raise NotFound("The requested image was not found or its link has expired.", code="not_found")
        response = FileResponse(default_storage.open(image.file, "rb"), content_type=image.content_type)
        response["Cache-Control"] = "private, max-age=3600"
        return response


class UnknownRouteView(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs
        self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        exc = NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
        response = self.handle_exception(exc)
        self.response = self.finalize_response(self.request, response, *args, **kwargs)
        return self.response


def task_object(*, job: Job, base_url: str) -> dict[str, Any]:
    """A job as a task: status, progress, timestamps, and the result or the error."""
    total = max(1, job.steps)
    done = min(job.steps_done, total) if job.status != Job.Status.SUCCEEDED else total

    def ts(value):
        return int(value.timestamp()) if value else None

    body: dict[str, Any] = {
        "id": str(job.pk), "object": "image.task", "status": job.status, "model": job.model.public_id,
        "kind": job.kind, "created_at": ts(job.created_at), "started_at": ts(job.started_at),
        "finished_at": ts(job.finished_at),
        "progress": {"steps_done": done, "steps_total": total, "fraction": round(done / total, 3)},
        "result": None, "error": None,
    }
    if job.status == Job.Status.SUCCEEDED:
        body["result"] = images_response_body(job=job, base_url=base_url)
    elif job.status in (Job.Status.FAILED, Job.Status.CANCELLED):
        body["error"] = {"message": job.error_message, "type": "server_error" if job.status == Job.Status.FAILED
                         else "invalid_request_error", "param": None, "code": job.error_code or None}
    return body


class TaskDetailView(APIView):
    """GET /v1/images/tasks/{id} reads a job; DELETE cancels it (releasing its hold).
    Another tenant's job is a 404, exactly like one that does not exist."""

    def _job(self, request: Request, task_id: str) -> Job:
        job = selectors.job_get(tenant=request.auth.tenant, job_id=task_id)
        if job is None:
            raise NotFound("No such task.", param="id", code="not_found")
        return job

    def get(self, request: Request, task_id: str) -> Response:
        job = self._job(request, task_id)
        return Response(task_object(job=job, base_url=request.build_absolute_uri("/")))

    def delete(self, request: Request, task_id: str) -> Response:
        job = self._job(request, task_id)
        if job.status in Job.TERMINAL:
            raise InvalidRequest(f"The task is already {job.status} and cannot be cancelled.", param="id",
                                 code="task_not_cancellable")
        services_jobs.job_cancel(job=job)
        job.refresh_from_db()
        return Response(task_object(job=job, base_url=request.build_absolute_uri("/")))


MB = 1024 * 1024


def _form(request: Request) -> dict[str, Any]:
    """Multipart fields as a plain dict (first value of each), files left out."""
    data = request.data
    if hasattr(data, "lists"):
        return {k: v[0] for k, v in data.lists() if k not in request.FILES and not k.startswith("image")}
    return dict(data)


def _uploads(request: Request, name: str) -> list:
    files = request.FILES.getlist(name) + request.FILES.getlist(f"{name}[]")
    for key in request.FILES:  # some clients send image[0], image[1] ...
        if key.startswith(f"{name}[") and key != f"{name}[]":
            files += request.FILES.getlist(key)
    return files


def _store_input(image, *, kind: str, token: str) -> str:
    import io

    from django.core.files.base import ContentFile

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return default_storage.save(f"inputs/{token[:2]}/{token}-{kind}.png", ContentFile(buffer.getvalue()))


class ImageInputsView(ChargedView):
    """Shared by edits and variations: read the files, prepare init and mask, submit."""

    kind = Job.Kind.EDIT

    def submit_with_images(self, request: Request, *, data: dict[str, Any], model: ImageModel, images: list,
                           mask, strength: float, idempotency_record_id: int | None) -> Response:
        import uuid

        from images import uploads

        if data.get("size") in (None, "", "auto") and model.profile == ImageModel.Profile.GPT_IMAGE:
            data = {**data, "size": uploads.nearest_gpt_size(images[0])}
        params = generation_params_resolve(data=data, model=model, prompt_required=self.kind == Job.Kind.EDIT)
        if params.prompt.strip():
            services_moderation.prompt_moderate(tenant=request.auth.tenant, api_key=request.auth, model=model,
                                     prompt=params.prompt, requested=None, endpoint=self.endpoint,
                                     request_id=getattr(request._request, "request_id", ""))
        token = uuid.uuid4().hex
        stored = [_store_input(uploads.init_image(images, width=params.width, height=params.height), kind="init",
                               token=token)]
        if mask is not None:
            stored.append(_store_input(uploads.edit_mask(mask, first=images[0], width=params.width,
                                                         height=params.height), kind="mask", token=token))
        params.extra = {"init_file": stored[0], "mask_file": stored[1] if mask is not None else None,
                        "strength": strength, "inputs": len(images)}
        try:
            job = services_generation.generation_submit(tenant=request.auth.tenant, api_key=request.auth, model=model,
                                             params=params, endpoint=self.endpoint, kind=self.kind,
                                             idempotency_record_id=idempotency_record_id)
        except Exception:
            from images.files import image_delete_files

            image_delete_files(stored)
            raise
        return self.respond(request, job)


class ImageEditView(ImageInputsView):
    """POST /v1/images/edits (multipart: image or image[] up to 16, optional mask)."""

    endpoint = "/v1/images/edits"
    stream_prefix = "image_edit"

    def submit(self, request: Request, idempotency_record_id: int | None) -> Response:
        from images import uploads
        from images.validation import EditRequestSerializer, edit_strength

        serializer = EditRequestSerializer(data=_form(request))
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        model = model_for_request(data=data, api_key=request.auth)
        if model.profile == ImageModel.Profile.DALLE3:
            raise InvalidRequest(f"The model '{model.public_id}' does not support image edits.", param="model",
                                 code="unsupported_model")
        files = _uploads(request, "image")
        if not files:
            raise InvalidRequest("Missing required parameter: 'image'.", param="image",
                                 code="missing_required_parameter")
        if model.profile == ImageModel.Profile.DALLE2:
            if len(files) > 1:
                raise InvalidRequest(f"'{model.public_id}' edits take exactly one image.", param="image",
                                     code="invalid_value")
            limit, formats = 4 * MB, ("png",)
        else:
            if len(files) > 16:
                raise InvalidRequest(f"At most 16 images may be edited together; {len(files)} were sent.",
                                     param="image", code="too_many_images")
            limit, formats = 50 * MB, ("png", "jpeg", "webp")
        images = [uploads.read_upload(f, param="image", max_bytes=limit, formats=formats) for f in files]
        if model.profile == ImageModel.Profile.DALLE2 and images[0].width != images[0].height:
            raise InvalidRequest("Invalid file 'image': dall-e-2 edits need a square image.", param="image",
                                 code="invalid_image")
        mask_file = request.FILES.get("mask")
        mask = uploads.read_upload(mask_file, param="mask", max_bytes=4 * MB, formats=("png",)) if mask_file else None
        return self.submit_with_images(request, data=data, model=model, images=images, mask=mask,
                                       strength=edit_strength(data=data, model=model),
                                       idempotency_record_id=idempotency_record_id)


class ImageVariationView(ImageInputsView):
    """POST /v1/images/variations: dall-e-2 profile only; a square PNG under 4 MB."""

    endpoint = "/v1/images/variations"
    kind = Job.Kind.VARIATION

    def submit(self, request: Request, idempotency_record_id: int | None) -> Response:
        from images import uploads
        from images.validation import VARIATION_STRENGTH, VariationRequestSerializer

        serializer = VariationRequestSerializer(data=_form(request))
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        model = model_for_request(data=data, api_key=request.auth)
        if model.profile != ImageModel.Profile.DALLE2:
            raise InvalidRequest(f"Variations are only supported for dall-e-2 models, not '{model.public_id}'.",
                                 param="model", code="unsupported_model")
        files = _uploads(request, "image")
        if len(files) != 1:
            raise InvalidRequest("Missing required parameter: 'image'." if not files else
                                 "Variations take exactly one image.", param="image",
                                 code="missing_required_parameter" if not files else "invalid_value")
        image = uploads.read_upload(files[0], param="image", max_bytes=4 * MB, formats=("png",))
        if image.width != image.height:
            raise InvalidRequest("Invalid file 'image': variations need a square image.", param="image",
                                 code="invalid_image")
        data["prompt"] = ""  # no prompt: the variation comes from the image alone
        return self.submit_with_images(request, data=data, model=model, images=[image], mask=None,
                                       strength=VARIATION_STRENGTH, idempotency_record_id=idempotency_record_id)
