"""The vendor request shapes of ../shared/seeds, each a thin adapter over the same
validation, moderation, billing and job services as the OpenAI endpoints."""
from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import APIError, InvalidRequest, error_headers
from images.api import (ImageGenerationView, ImageInputsView, MB, job_result_response, model_for_request,
                        _replayable_headers)
from images.files import image_read, image_url
from images.models import ImageModel, Job
from images.profiles import output_tokens
from images.validation import GenerationRequestSerializer, edit_strength


class VisionGenerateView(ImageGenerationView):
    """POST /v1/vision/generate (seed 000, AlphaEdge): every image with both `url` and
    `b64_json`; `{"id", "object": "vision.image", "created", "data"}`."""

    endpoint = "/v1/vision/generate"
    default_model = "alphaedge-vision-3-1-2505"

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        data = {**data, "model": data.get("model") or self.default_model}
        data.pop("response_format", None)
        return data

    def render(self, request: Request, job: Job) -> Response:
        base = request.build_absolute_uri("/")
        data = [{"url": image_url(img, base_url=base), "b64_json": base64.b64encode(image_read(img)).decode("ascii")}
                for img in job.images.all()]
        return Response({"id": f"img-{job.pk.hex}", "object": "vision.image",
                         "created": int(job.created_at.timestamp()), "data": data})


class AigneGenerationView(ImageInputsView, ImageGenerationView):
    """POST /api/images/generations (seed 002, AIGNE Hub): OpenAI's generation fields
    with `model` defaulting to dall-e-2; an `image` (URL, base64, data URI, or a list)
    turns the call into an edit of those images."""

    endpoint = "/api/images/generations"
    kind = Job.Kind.EDIT

    def submit(self, request: Request, idempotency_record_id: int | None) -> Response:
        from images import uploads
        from images.fetch import image_bytes_from_reference

        raw = request.data if isinstance(request.data, dict) else None
        references = raw.get("image") if raw is not None else None
        if not references:
            return ImageGenerationView.submit(self, request, idempotency_record_id)
        if isinstance(references, str):
            references = [references]
        if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
            raise InvalidRequest("'image' must be a URL, base64 data, or a list of them.", param="image",
                                 code="invalid_value")
        if len(references) > 16:
            raise InvalidRequest("At most 16 images may be edited together.", param="image", code="too_many_images")
        fields = {k: v for k, v in raw.items() if k != "image"}
        serializer = GenerationRequestSerializer(data=fields)
        serializer.is_valid(raise_exception=True)
        data = {k: v for k, v in serializer.validated_data.items() if k not in ("style", "moderation")}
        model = model_for_request(data=data, api_key=request.auth)
        if model.profile == ImageModel.Profile.DALLE3:
            raise InvalidRequest(f"The model '{model.public_id}' does not support image edits.", param="model",
                                 code="unsupported_model")
        images = [uploads.image_open(image_bytes_from_reference(ref, param="image", max_bytes=20 * MB),
                                     param="image", max_bytes=20 * MB, formats=("png", "jpeg", "webp"))
                  for ref in references]
        return self.submit_with_images(request, data=data, model=model, images=images, mask=None,
                                       strength=edit_strength(data=data, model=model),
                                       idempotency_record_id=idempotency_record_id)


class ResellerGenerationView(ImageGenerationView):
    """POST /api/v1/image/generation (seed 003): GPT-image parameters, `model` fixed by
    that page to gpt-image-1.5; answers in its own envelope
    `{code, data{urls, usage{images, seconds, input_tokens, output_tokens, total_tokens},
    expired, task_id, task_status}, message, request_id}`, errors too (code = HTTP status).
    `stream: true` answers with the OpenAI event stream (reference §7)."""

    endpoint = "/api/v1/image/generation"
    default_model = "gpt-image-1.5"

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        data = {**data, "model": data.get("model") or self.default_model}
        if not isinstance(data.get("partial_images"), int):
            data.pop("partial_images", None)  # that page documents it as a quality string
        return data

    def render(self, request: Request, job: Job) -> Response:
        base = request.build_absolute_uri("/")
        images = list(job.images.all())
        expires = job.finished_at + timedelta(seconds=settings.IMAGE_URL_TTL_SECONDS)
        text_tokens = job.prompt_tokens or 0
        out = output_tokens(job.size, job.params["quality"]) * len(images)
        seconds = round((job.finished_at - job.created_at).total_seconds(), 3)
        return Response({"code": 0, "message": "success", "request_id": request._request.request_id, "data": {
            "urls": [image_url(img, base_url=base) for img in images],
            "usage": {"images": len(images), "seconds": seconds, "input_tokens": text_tokens, "output_tokens": out,
                      "total_tokens": text_tokens + out},
            "expired": expires.isoformat().replace("+00:00", "Z"), "task_id": str(job.pk),
            "task_status": job.status}})

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(getattr(response, "data", None), dict) and "error" in response.data:
            error = response.data["error"]
            response.data = {"code": response.status_code, "data": None, "message": error["message"],
                             "error": error, "request_id": getattr(self.request._request, "request_id", "")}
        return response
