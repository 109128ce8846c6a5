"""The Midjourney-proxy shape's HTTP adapters (issue 26 item 3; docs/api.md
"Midjourney-proxy shape"): /mj/submit/* are mappers and a renderer around the one
charged flow (images/charged.py ChargedViewSet: Idempotency-Key, generation_create, money,
limits); /mj/task/* read tasks; /mj/image/{token} serves a task's grid by a signed link.
What the actions do is images/services/midjourney.py.

Answers are the proxy's: a submission is `{code, description, result, properties}`
(SubmitResultVO: 1 submitted, 22 queued, 4 validation error, 24 banned prompt, 3 not
found), a task is its Task object. Refusals the proxy itself makes (a validation error,
a banned prompt, an unknown task to change) come with HTTP 200, as the proxy sends them;
this platform's own refusals keep their status (401, 402 without credits, 403, 409,
413, 429 with code 23, 5xx with code 9) in the same envelope, with OpenAI's error object
(type, param, code, and a 402's required/available/held/top_up_url) in `properties`.
Both `Authorization: Bearer` and the proxy's `mj-api-secret` header carry the API key.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseRedirect
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import APIKeyAuthentication, HeaderKeyAuthentication
from accounts.principals import tenant_active_check
from accounts.ratelimit import caller_from_request
from core.errors import InvalidRequest, NotFound, PermissionDeniedError
from images.charged import ChargedViewSet, Renderer, base_url
from images.files import StorageUnavailable, image_presigned_url, storage_is_remote
from images.models import Job, MidjourneyTask
from images.services import midjourney as mj
from images.services.generation import GenerationRequest


class MidjourneySecretAuthentication(HeaderKeyAuthentication):
    """The proxy's `mj-api-secret` header (Constants.API_SECRET_HEADER_NAME) carries our API key."""

    header = "HTTP_MJ_API_SECRET"


AUTHENTICATION = [APIKeyAuthentication, MidjourneySecretAuthentication]
MODERATION_CODES = ("content_policy_violation", "moderation_blocked")


def mj_error_body(*, error: dict[str, Any], status: int, submit: bool, prompt: str) -> tuple[dict[str, Any], int]:
    """(body, HTTP status) of an error in the proxy's envelope (module docstring)."""
    properties = {k: v for k, v in error.items() if k != "message"}
    if status == 400 and error.get("code") in MODERATION_CODES:
        code, status = mj.CODE_BANNED_PROMPT, 200
        properties.update(promptEn=prompt, bannedWord=None)  # (which word is not told)
    elif status == 400:
        code, status = mj.CODE_VALIDATION_ERROR, 200
    elif status == 404:
        code, status = mj.CODE_NOT_FOUND, (200 if submit else 404)
    elif status == 429:
        code = mj.CODE_QUEUE_REJECTED
    elif status >= 500:
        code = mj.CODE_FAILURE
    else:
        code = mj.CODE_VALIDATION_ERROR
    return {"code": code, "description": error.get("message", ""), "result": None, "properties": properties}, status


class MidjourneyErrors:
    """Every error of these views in the proxy's envelope (DRF's handler first, so the
    OpenAI error object, its headers and metrics stay the same)."""

    submit = False

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(getattr(response, "data", None), dict) and "error" in response.data:
            prompt = getattr(self.request._request, "mj_prompt", "") if getattr(self, "request", None) else ""
            response.data, response.status_code = mj_error_body(
                error=response.data["error"], status=response.status_code, submit=self.submit, prompt=prompt
            )
        return response


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    return request.data


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string.", param=name, code="invalid_type")
    return value


def _submission(data: dict[str, Any], action: str, **extra: Any) -> mj.MjSubmission:
    return mj.MjSubmission(
        action=action, state=_text(data, "state"), notify_hook=_text(data, "notifyHook").strip(), **extra
    )


def _tenant(request: Request):
    caller = caller_from_request(request)
    if caller is None:
        raise PermissionDeniedError("Only members of an organization may use this API.", code="permission_denied")
    tenant_active_check(tenant=caller.tenant)
    return caller.tenant


def imagine_mapper(request: Request) -> GenerationRequest:
    """SubmitImagineDTO: prompt (with --ar, --seed, --no), base64Array (and the
    deprecated base64) of reference images, state, notifyHook."""
    data = _body(request)
    prompt = _text(data, "prompt").strip()
    request._request.mj_prompt = prompt
    if not prompt:
        raise InvalidRequest("prompt不能为空", param="prompt", code="missing_required_parameter")
    references = data.get("base64Array") or []
    if not isinstance(references, list) or not all(isinstance(item, str) and item for item in references):
        raise InvalidRequest("base64格式错误", param="base64Array", code="invalid_value")
    if _text(data, "base64"):
        references = [*references, data["base64"]]
    submission = _submission(data, MidjourneyTask.Action.IMAGINE, prompt=prompt, references=references)
    return mj.mj_generation_request(submission=submission)


def blend_mapper(request: Request) -> GenerationRequest:
    """SubmitBlendDTO: base64Array (2 to 5 images), dimensions (PORTRAIT 2:3, SQUARE
    1:1 by default, LANDSCAPE 3:2), state, notifyHook."""
    data = _body(request)
    references = data.get("base64Array")
    if not isinstance(references, list) or not 2 <= len(references) <= 5:
        raise InvalidRequest("base64List参数错误", param="base64Array", code="invalid_value")
    if not all(isinstance(item, str) and item for item in references):
        raise InvalidRequest("base64格式错误", param="base64Array", code="invalid_value")
    dimensions = data.get("dimensions") or "SQUARE"
    if dimensions not in mj.BLEND_DIMENSIONS:
        raise InvalidRequest("dimensions参数错误", param="dimensions", code="invalid_value")
    submission = _submission(data, MidjourneyTask.Action.BLEND, prompt="", references=references, dimensions=dimensions)
    return mj.mj_generation_request(submission=submission)


def describe_mapper(request: Request) -> GenerationRequest:
    """SubmitDescribeDTO: base64 (one image, a data URL), state, notifyHook; run by the
    captioner tool model (issue 26 item 1: images/services/midjourney.mj_describe_request)."""
    data = _body(request)
    image = _text(data, "base64").strip()
    submission = _submission(data, MidjourneyTask.Action.DESCRIBE, prompt="", references=[image] if image else [])
    return mj.mj_describe_request(submission=submission)


def _change(request: Request, data: dict[str, Any], *, task_id: str, action: str, index: Any) -> GenerationRequest:
    if not task_id:
        raise InvalidRequest("taskId不能为空", param="taskId", code="missing_required_parameter")
    if action not in (
        MidjourneyTask.Action.UPSCALE,
        MidjourneyTask.Action.VARIATION,
        MidjourneyTask.Action.REROLL,
    ):
        raise InvalidRequest("action参数错误", param="action", code="invalid_value")
    if action != MidjourneyTask.Action.REROLL and (isinstance(index, bool) or index not in (1, 2, 3, 4)):
        raise InvalidRequest("index参数错误: 1-4", param="index", code="invalid_value")
    parent = mj.mj_task_get(tenant=_tenant(request), task_id=task_id)
    if parent is None:
        raise NotFound("关联任务不存在或已失效", param="taskId", code="not_found")
    request._request.mj_prompt = parent.prompt
    submission = _submission(data, action, prompt=parent.prompt, parent=parent, index=index)
    return mj.mj_generation_request(submission=submission)


def change_mapper(request: Request) -> GenerationRequest:
    """SubmitChangeDTO: taskId, action (UPSCALE, VARIATION, REROLL), index (1-4)."""
    data = _body(request)
    return _change(
        request, data, task_id=_text(data, "taskId").strip(), action=_text(data, "action"), index=data.get("index")
    )


def simple_change_mapper(request: Request) -> GenerationRequest:
    """SubmitSimpleChangeDTO: content "<task id> U2" (U1-U4, V1-V4, R), read as the
    proxy's ConvertUtils.convertChangeParams reads it."""
    data = _body(request)
    parts = _text(data, "content").split(" ")
    parts = [p for p in parts if p]
    if len(parts) != 2:
        raise InvalidRequest("content参数错误", param="content", code="invalid_value")
    task_id, word = parts[0], parts[1].lower()
    if word == "r":
        return _change(request, data, task_id=task_id, action=MidjourneyTask.Action.REROLL, index=None)
    actions = {"u": MidjourneyTask.Action.UPSCALE, "v": MidjourneyTask.Action.VARIATION}
    if word[0] not in actions or len(word) != 2 or word[1] not in "1234":
        raise InvalidRequest("content参数错误", param="content", code="invalid_value")
    return _change(request, data, task_id=task_id, action=actions[word[0]], index=int(word[1]))


def action_mapper(request: Request) -> GenerationRequest:
    """SubmitActionDTO (the plus proxy): taskId and customId from that task's `buttons`
    (U1-U4, V1-V4, 🔄); chooseSameChannel and accountFilter are accepted and ignored."""
    data = _body(request)
    custom_id = _text(data, "customId").strip()
    if not custom_id:
        raise InvalidRequest("customId不能为空", param="customId", code="missing_required_parameter")
    action_name, index, digest = mj.mj_custom_id_parse(custom_id)
    task_id = _text(data, "taskId").strip()
    if not task_id:  # (the hash names the task too: its job's id)
        found = MidjourneyTask.objects.filter(tenant=_tenant(request), job_id=digest).values_list("pk", flat=True)
        task_id = next(iter(found), "")
    parent = mj.mj_task_get(tenant=_tenant(request), task_id=task_id) if task_id else None
    if parent is not None and mj.mj_message_hash(parent) != digest:
        raise InvalidRequest("customId does not belong to this task.", param="customId", code="invalid_value")
    return _change(request, data, task_id=task_id, action=action_name, index=index)


def _accepted(request: Request, job: Job) -> Response:
    """SubmitResultVO for the new task; its notifyHook hears SUBMITTED."""
    task = getattr(job, "_midjourney_task", None) or MidjourneyTask.objects.select_related("job__model").get(job=job)
    if task.notify_hook:
        mj.mj_notify(job_id=job.pk, stage="SUBMITTED")
    return Response(mj.mj_submit_body(task=task))


MJ_SUBMIT = Renderer(body=lambda request, job: {}, always_async=True, accepted=_accepted)


@extend_schema(exclude=True)  # (the vendor's own shape; docs/api.md documents it)
class MidjourneySubmitViewSet(MidjourneyErrors, ChargedViewSet):
    """POST /mj/submit/imagine, change, simple-change, action, blend, describe (the
    captioner tool model, issue 26 item 1)."""

    authentication_classes = AUTHENTICATION
    submit = True

    @action(detail=False, methods=["post"])
    def imagine(self, request: Request) -> Response:
        return self.charged(request, imagine_mapper, MJ_SUBMIT)

    @action(detail=False, methods=["post"])
    def change(self, request: Request) -> Response:
        return self.charged(request, change_mapper, MJ_SUBMIT)

    @action(detail=False, methods=["post"], url_path="simple-change")
    def simple_change(self, request: Request) -> Response:
        return self.charged(request, simple_change_mapper, MJ_SUBMIT)

    @action(detail=False, methods=["post"], url_path="action")
    def submit_action(self, request: Request) -> Response:
        return self.charged(request, action_mapper, MJ_SUBMIT)

    @action(detail=False, methods=["post"])
    def describe(self, request: Request) -> Response:
        return self.charged(request, describe_mapper, MJ_SUBMIT)

    @action(detail=False, methods=["post"])
    def blend(self, request: Request) -> Response:
        return self.charged(request, blend_mapper, MJ_SUBMIT)


@extend_schema(exclude=True)
class MidjourneyTaskViewSet(MidjourneyErrors, viewsets.ViewSet):
    """GET /mj/task/{id}/fetch and POST /mj/task/list-by-condition (`{ids: [...]}`):
    the caller's tenant's tasks only (another tenant's id is not found)."""

    authentication_classes = AUTHENTICATION
    lookup_field = "task_id"
    lookup_value_regex = "[^/]+"

    @action(detail=True, methods=["get"])
    def fetch(self, request: Request, task_id: str) -> Response:
        task = mj.mj_task_get(tenant=_tenant(request), task_id=task_id)
        if task is None:
            raise NotFound("数据未找到", param="id", code="not_found")
        return Response(mj.mj_task_body(task, base_url=base_url(request)))

    @action(detail=False, methods=["post"], url_path="list-by-condition")
    def list_by_condition(self, request: Request) -> Response:
        data = _body(request)
        ids = data.get("ids")
        if ids is None:
            return Response([])  # (as the proxy: no ids, no tasks)
        if not isinstance(ids, list):
            raise InvalidRequest("'ids' must be a list of task ids.", param="ids", code="invalid_type")
        tasks = mj.mj_tasks_by_ids(tenant=_tenant(request), ids=ids)
        return Response([mj.mj_task_body(task, base_url=base_url(request)) for task in tasks])


@extend_schema(exclude=True)
class MidjourneyImageViewSet(MidjourneyErrors, viewsets.ViewSet):
    """GET /mj/image/{token}: a grid by its signed link, readable without the key (like
    /v1/files/{token}: a redirect to a presigned URL on an object store)."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []
    lookup_field = "token"
    lookup_value_regex = "[^/]+"

    def retrieve(self, request: Request, token: str) -> HttpResponse:
        found = mj.mj_grid_for_token(token)
        if found is None:
            raise NotFound("The requested image was not found or its link has expired.", code="not_found")
        name, seconds_left = found
        if storage_is_remote() and settings.S3_PRESIGNED_REDIRECT:
            response = HttpResponseRedirect(image_presigned_url(name, expires_in=int(seconds_left)))
            response["Cache-Control"] = "private, no-store"
            return response
        try:
            handle = default_storage.open(name, "rb")
        except FileNotFoundError as exc:
            raise NotFound("The requested image is no longer stored.", code="not_found") from exc
        except Exception as exc:
            raise StorageUnavailable(
                "The image store is unavailable; retry shortly.", headers={"Retry-After": "5"}
            ) from exc
        response = FileResponse(handle, content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response
