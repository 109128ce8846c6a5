"""Output serializers of the images app: every response body is rendered through one
of these, and the OpenAPI schema documents the same classes, so the schema and the
behaviour are one thing. `*_body` functions build a job's data and return the
serializer's `.data` (fields a serializer does not declare are never rendered).

Shapes: ImagesResponse (reference §6), the task object, the model object (OpenAI's
`/v1/models`), AlphaEdge's `vision.image` (seed 000) and the reseller envelope (seed 003).
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_serializer, inline_serializer
from rest_framework import serializers

from core.schema import ErrorDetailSerializer
from images import selectors
from images.errors import job_error
from images.files import image_read, image_url, job_images_check
from images.models import ImageModel, Job
from images.profiles import PROFILES, output_tokens
from images.queue_position import queue_position
from images.validation import image_seed


class OutputModerationSerializer(serializers.Serializer):
    """Extension (issue 25): what the output classifier did to an image (or a task's images)."""

    action = serializers.ChoiceField(
        choices=["blocked", "blurred", "flagged"],
        help_text="blurred: delivered strongly blurred; flagged: delivered as made; blocked (tasks only): "
        "some or all images withheld",
    )
    categories = serializers.ListField(child=serializers.CharField(), help_text="the classifier's unsafe labels")
    withheld = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        help_text="tasks only: the indexes (0..n-1) of the images withheld, neither delivered nor charged",
    )


class WithheldImageSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="the image's place among the n asked for (0-based)")
    categories = serializers.ListField(child=serializers.CharField())


class ImageDataSerializer(serializers.Serializer):
    url = serializers.URLField(required=False, help_text="Signed link, readable without the key, one hour")
    b64_json = serializers.CharField(required=False)
    revised_prompt = serializers.CharField(required=False, help_text="dall-e-3 only")
    seed = serializers.IntegerField(
        required=False,
        help_text="Extension (not in OpenAI's API): the seed this image was made with; sent back as `seed` "
        "with n=1 it makes the same image (docs/api.md)",
    )
    moderation = OutputModerationSerializer(
        required=False,
        help_text="Extension (issue 25): present only when the output classifier found the image unsafe and "
        "the tenant's action delivers it (blurred or flagged; docs/api.md)",
    )


class InputTokensDetailsSerializer(serializers.Serializer):
    text_tokens = serializers.IntegerField()
    image_tokens = serializers.IntegerField(help_text="Input images of edits (docs/api.md: the tile rule)")


class ImageUsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    input_tokens_details = InputTokensDetailsSerializer()


class ImagesResponseSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="Unix seconds")
    data = ImageDataSerializer(many=True)
    background = serializers.CharField(required=False, help_text="GPT-image models only")
    output_format = serializers.CharField(required=False, help_text="GPT-image models only")
    size = serializers.CharField(required=False, help_text="GPT-image models only")
    quality = serializers.CharField(required=False, help_text="GPT-image models only")
    usage = ImageUsageSerializer(required=False, help_text="GPT-image models only")
    withheld = WithheldImageSerializer(
        many=True,
        required=False,
        help_text="Extension (issue 25): present only when the output classifier withheld some of the n images "
        "(a tenant on `block`); `data` holds the others, in order, and only they are charged",
    )


class TaskProgressSerializer(serializers.Serializer):
    steps_done = serializers.IntegerField()
    steps_total = serializers.IntegerField()
    fraction = serializers.FloatField()


class TaskSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="image.task")
    status = serializers.ChoiceField(choices=["queued", "running", "succeeded", "failed", "cancelled"])
    model = serializers.CharField()
    kind = serializers.ChoiceField(choices=["generate", "edit", "variation"])
    created_at = serializers.IntegerField()
    started_at = serializers.IntegerField(allow_null=True)
    finished_at = serializers.IntegerField(allow_null=True)
    progress = TaskProgressSerializer()
    credits_charged = serializers.IntegerField(
        help_text="Credits charged so far (a cancelled task pays for the steps it ran)"
    )
    seeds = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="Extension: the seed of each image, in order (the images made, once succeeded; "
        "before that, the seeds the task will use)",
    )
    result = ImagesResponseSerializer(allow_null=True)
    error = ErrorDetailSerializer(allow_null=True)
    queue_position = serializers.IntegerField(
        allow_null=True,
        required=False,
        help_text="Extension: a queued task's place in its model's queue (1 = next); null once running "
        "or finished (images/queue_position.py)",
    )
    moderation = OutputModerationSerializer(
        allow_null=True,
        required=False,
        help_text="Extension (issue 25): what the output classifier did to the task's images; null when it "
        "found nothing (or did not run)",
    )


class ModelPriceSerializer(serializers.Serializer):
    """One price of a model (extension, docs/api.md): one image of `kind` at `size` and `quality`."""

    kind = serializers.ChoiceField(
        choices=["generate", "edit", "variation", "upscale", "remove_bg", "segment", "describe"],
        help_text="the request kind; a tool model's (docs/models.md) is its job kind",
    )
    size = serializers.CharField(help_text='e.g. 1024x1024; "any" for a tool model (priced per image)')
    quality = serializers.CharField(
        help_text='the resolved quality: standard, hd, low, medium, high; "any" for a tool model'
    )
    credits = serializers.IntegerField(help_text="credits charged per image (what the ledger records)")
    amount = serializers.CharField(
        allow_null=True, help_text='the same in `currency`, a decimal string ("0.016"); null when not configured'
    )
    currency = serializers.CharField(allow_null=True, help_text='ISO 4217 code in capitals ("USD")')


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="model")
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
    # Extension (not in OpenAI's model object; clients ignore unknown fields): the price
    # per image for every kind, size and quality the model accepts, so a client can price
    # a request before sending it.
    pricing = ModelPriceSerializer(many=True)


@extend_schema_serializer(many=False)  # the list action answers one object, not an array
class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelSerializer(many=True)


class VisionImageSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="vision.image")
    created = serializers.IntegerField()
    data = inline_serializer(
        "VisionImageData", {"url": serializers.URLField(), "b64_json": serializers.CharField()}, many=True
    )


class ResellerUsageSerializer(serializers.Serializer):
    images = serializers.IntegerField()
    seconds = serializers.FloatField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ResellerDataSerializer(serializers.Serializer):
    urls = serializers.ListField(child=serializers.URLField())
    usage = ResellerUsageSerializer()
    expired = serializers.CharField(help_text="ISO 8601, UTC")
    task_id = serializers.CharField()
    task_status = serializers.CharField()


class ResellerResponseSerializer(serializers.Serializer):
    code = serializers.IntegerField(help_text="0 on success, else the HTTP status")
    message = serializers.CharField()
    request_id = serializers.CharField()
    data = ResellerDataSerializer(allow_null=True)


class ResellerErrorSerializer(serializers.Serializer):
    code = serializers.IntegerField(help_text="The HTTP status")
    data = serializers.JSONField(allow_null=True)
    message = serializers.CharField()
    request_id = serializers.CharField()
    error = ErrorDetailSerializer()


# ---- Builders ------------------------------------------------------------------------


def input_tokens(job: Job) -> tuple[int, int]:
    """(text tokens, image tokens) of a job's input: the prompt as the model's tokenizer
    counted it, and the input images of an edit (profiles.input_image_tokens)."""
    return job.prompt_tokens or 0, int((job.params.get("extra") or {}).get("image_tokens") or 0)


def usage_body(job: Job, *, images: int | None = None, with_input: bool = True) -> dict[str, Any]:
    """GPT-image `usage`: input = text + image tokens (`with_input=False`: none, for
    the second and later images of a stream); output = OpenAI's per-image token table
    for the size and quality, times `images` (default: the images the job made)."""
    text, image_tokens = input_tokens(job) if with_input else (0, 0)
    count = job.images.count() if images is None else images
    out = output_tokens(job.size, job.params["quality"]) * count
    return {
        "input_tokens": text + image_tokens,
        "output_tokens": out,
        "total_tokens": text + image_tokens + out,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image_tokens},
    }


def images_response_body(*, job: Job, base_url: str) -> dict[str, Any]:
    """ImagesResponse (reference §6): DALL·E profiles get created+data only; GPT-image
    ones also the resolved size/quality/background/output_format and usage."""
    job_images_check(job)  # purged by retention: 410 images_expired, never links to nothing
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
        if image.seed is not None:
            item["seed"] = image.seed
        if image.moderation:
            item["moderation"] = image.moderation
        data.append(item)
    body: dict[str, Any] = {"created": int(job.created_at.timestamp()), "data": data}
    withheld = job_withheld(job)
    if withheld:
        body["withheld"] = withheld
    if profile.gpt:
        body.update(
            background=params["background"],
            output_format=params["output_format"],
            size=params["size"],
            quality=params["quality"],
            usage=usage_body(job),
        )
    return ImagesResponseSerializer(body).data


def job_withheld(job: Job) -> list[dict[str, Any]]:
    """The images of a job the output classifier withheld (issue 25): [{index, categories}],
    each with that image's own categories (a job settled before they were recorded per
    image shows the job's)."""
    summary = job.output_moderation or {}
    indexes = summary.get("withheld") or []
    own = summary.get("withheld_categories") or []
    if len(own) != len(indexes):
        own = [summary.get("categories") or []] * len(indexes)
    return [{"index": index, "categories": list(categories)} for index, categories in zip(indexes, own, strict=True)]


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


def job_seeds(job: Job) -> list[int]:
    """The seed of each image of a job: the images' own once it succeeded, else the
    seeds its n images will use (or would have: a failed or cancelled task's seeds can
    be sent again)."""
    if job.status == Job.Status.SUCCEEDED:
        seeds = [image.seed for image in job.images.all()]
        if all(seed is not None for seed in seeds):
            return seeds
    return [image_seed(job.seed, i) for i in range(job.n)]


def task_body(*, job: Job, base_url: str) -> dict[str, Any]:
    """A job as a task: status, progress, timestamps, credits charged, and the result or the error."""
    total = max(1, job.steps)
    done = min(job.steps_done, total) if job.status != Job.Status.SUCCEEDED else total
    hold = getattr(job, "hold", None)  # (None without one: the reverse accessor raises an AttributeError)
    body: dict[str, Any] = {
        "id": str(job.pk),
        "object": "image.task",
        "status": job.status,
        "model": job.model.public_id,
        "kind": job.kind,
        "created_at": _ts(job.created_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
        "progress": {"steps_done": done, "steps_total": total, "fraction": round(done / total, 3)},
        "credits_charged": hold.captured if hold is not None else 0,
        "seeds": job_seeds(job),
        "result": None,
        "error": None,
        "queue_position": queue_position(queue=job.model.queue, job_id=job.pk)
        if job.status == Job.Status.QUEUED
        else None,
        "moderation": job.output_moderation or None,
    }
    error = job_error(job=job)  # how it ended, as a waiting request hears it (images/errors.py)
    if error is not None:
        body["error"] = error.body()["error"]
    elif job.status == Job.Status.SUCCEEDED:
        body["result"] = images_response_body(job=job, base_url=base_url)
    data = TaskSerializer(body).data
    if error is not None:  # the error object whole: its fields beyond the four (moderation_details...)
        data["error"] = {**data["error"], **body["error"]}
    return data


def task_body_from_status(*, job_id: str, status: dict[str, str]) -> dict[str, Any]:
    """A queued or running task from its status snapshot (images.task_status), the same
    object task_body renders from the row: nothing is charged, no result, no error yet."""
    return TaskSerializer(task_fields_from_status(job_id=job_id, status=status)).data


def task_fields_from_status(
    *, job_id: str, status: dict[str, str], positions: dict[str, int | None] | None = None
) -> dict[str, Any]:
    """task_body_from_status's fields before TaskSerializer renders them;
    images.task_poll renders them with one serializer kept. A queued task's position is
    taken from `positions` (queue -> place, read with the snapshot:
    task_status.task_status_read_placed) when its queue is there, else read now."""
    queue = status.get("queue")
    position = None
    if status["status"] == Job.Status.QUEUED and queue:
        position = positions[queue] if positions and queue in positions else queue_position(queue=queue, job_id=job_id)
    total = max(1, int(status["steps"]))
    done = min(int(status.get("steps_done") or 0), total)
    started = status.get("started_at")
    body: dict[str, Any] = {
        "id": str(job_id),
        "object": "image.task",
        "status": status["status"],
        "model": status["model"],
        "kind": status["kind"],
        "created_at": int(float(status["created_at"])),
        "started_at": int(float(started)) if started else None,
        "finished_at": None,
        "progress": {"steps_done": done, "steps_total": total, "fraction": round(done / total, 3)},
        "credits_charged": 0,
        "seeds": json.loads(status["seeds"]),
        "result": None,
        "error": None,
        "queue_position": position,
    }
    return body


def model_body(model: ImageModel) -> dict[str, Any]:
    return ModelSerializer(
        {
            "id": model.public_id,
            "object": "model",
            "created": int(model.created_at.timestamp()),
            "owned_by": model.owned_by,
            "pricing": [line.as_dict() for line in selectors.model_pricing(model)],
        }
    ).data


def model_list_body(models: list[ImageModel]) -> dict[str, Any]:
    return ModelListSerializer({"object": "list", "data": [model_body(m) for m in models]}).data


def vision_body(*, job: Job, base_url: str) -> dict[str, Any]:
    """Seed 000: every image with both `url` and `b64_json`, exactly the seed's item
    shape (its images' seeds are on the task: GET /v1/images/tasks/{id[4:]})."""
    job_images_check(job)
    data = [
        {"url": image_url(img, base_url=base_url), "b64_json": base64.b64encode(image_read(img)).decode("ascii")}
        for img in job.images.all()
    ]
    return VisionImageSerializer(
        {"id": f"img-{job.pk.hex}", "object": "vision.image", "created": int(job.created_at.timestamp()), "data": data}
    ).data


def reseller_body(*, job: Job, base_url: str, request_id: str) -> dict[str, Any]:
    """Seed 003's envelope: `{code: 0, message, request_id, data{urls, usage, expired, task_id, task_status}}`."""
    job_images_check(job)
    images = list(job.images.all())
    expires = job.finished_at + timedelta(seconds=settings.IMAGE_URL_TTL_SECONDS)
    usage = usage_body(job, images=len(images))
    seconds = round((job.finished_at - job.created_at).total_seconds(), 3)
    return ResellerResponseSerializer(
        {
            "code": 0,
            "message": "success",
            "request_id": request_id,
            "data": {
                "urls": [image_url(img, base_url=base_url) for img in images],
                "usage": {
                    "images": len(images),
                    "seconds": seconds,
                    "input_tokens": usage["input_tokens"],
                    "output_tokens": usage["output_tokens"],
                    "total_tokens": usage["total_tokens"],
                },
                "expired": expires.isoformat().replace("+00:00", "Z"),
                "task_id": str(job.pk),
                "task_status": job.status,
            },
        }
    ).data


def reseller_error_body(*, error: dict[str, Any], status: int, request_id: str) -> dict[str, Any]:
    """Seed 003's error envelope around OpenAI's error object. The object goes in whole:
    the fields an error carries beyond the four (a 402's `required`, `available`, `held`
    and `top_up_url`; a key budget's `budget_key`, `limit`, `spent`) are kept, as in
    the OpenAI envelope."""
    body = ResellerErrorSerializer(
        {"code": status, "data": None, "message": error["message"], "error": error, "request_id": request_id}
    ).data
    body["error"] = {**body["error"], **error}
    return body
