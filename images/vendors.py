"""The vendor request shapes of ../shared/seeds: each a request mapper and a renderer
around the same charged flow and generation service as the OpenAI endpoints
(images/charged.py). Only the fields each seed documents are accepted (plus our documented
extensions `seed` and `negative_prompt`); the rules are the service's.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import InvalidRequest
from images.charged import OPENAI_GENERATION, ChargedViewSet, Renderer, base_url
from images.fields import StrictCharField, StrictIntegerField
from images.mappers import validated
from images.models import Job
from images.openapi import charged_schema
from images.serializers import (
    ImagesResponseSerializer,
    ResellerErrorSerializer,
    ResellerResponseSerializer,
    VisionImageSerializer,
    reseller_body,
    reseller_error_body,
    vision_body,
)
from images.services.generation import GenerationRequest
from images.services.inputs import InputImage
from images.validation import ExtensionFields, GenerationRequestSerializer

# ---- Seed 000: AlphaEdge, POST /v1/vision/generate -----------------------------------------


class VisionRequestSerializer(ExtensionFields):
    """Seed 000's fields: model, prompt, size, n (plus our extensions). `response_format`
    is accepted and ignored: every image carries both a URL and base64."""

    ignored_fields = ("response_format",)
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    prompt = StrictCharField(trim_whitespace=False, allow_blank=True)
    size = StrictCharField(required=False, allow_null=True)
    n = StrictIntegerField(required=False, allow_null=True)


VISION_DEFAULT_MODEL = "alphaedge-vision-3-1-2505"


def vision_mapper(request: Request) -> GenerationRequest:
    fields = validated(VisionRequestSerializer, request.data)
    return GenerationRequest(endpoint="/v1/vision/generate", fields=fields, default_model=VISION_DEFAULT_MODEL)


VISION = Renderer(body=lambda request, job: vision_body(job=job, base_url=base_url(request)))


class VisionViewSet(ChargedViewSet):
    """POST /v1/vision/generate: `{"id", "object": "vision.image", "created", "data": [{url, b64_json}]}`."""

    @charged_schema(
        "Generate (AlphaEdge vision shape)",
        request=VisionRequestSerializer,
        response=VisionImageSerializer,
        tags=("vendors",),
    )
    def create(self, request: Request) -> Response:
        return self.charged(request, vision_mapper, VISION)


# ---- Seed 002: AIGNE Hub, POST /api/images/generations ------------------------------------


class AigneRequestSerializer(ExtensionFields):
    """Seed 002's fields: prompt, model (default dall-e-2), image (a URL, base64 or data
    URI, or a list of them: the call becomes an edit), n, size, response_format,
    quality, style; plus our extensions."""

    prompt = StrictCharField(trim_whitespace=False, allow_blank=True)
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    image = serializers.JSONField(
        required=False, help_text="URL, base64 or data URI (or a list): makes the call an edit"
    )
    n = StrictIntegerField(required=False, allow_null=True)
    size = StrictCharField(required=False, allow_null=True)
    response_format = StrictCharField(required=False, allow_null=True)
    quality = StrictCharField(required=False, allow_null=True)
    style = StrictCharField(required=False, allow_null=True)

    def validate_image(self, value: Any) -> list[str] | None:
        if value in (None, "", []):
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidRequest(
                "'image' must be a URL, base64 data, or a list of them.", param="image", code="invalid_value"
            )
        return value


def aigne_mapper(request: Request) -> GenerationRequest:
    fields = validated(AigneRequestSerializer, request.data)
    references = fields.pop("image", None)
    if not references:
        return GenerationRequest(endpoint="/api/images/generations", fields=fields)
    return GenerationRequest(
        endpoint="/api/images/generations",
        kind=Job.Kind.EDIT,
        fields=fields,
        images=[InputImage(param="image", reference=ref) for ref in references],
    )


class AigneViewSet(ChargedViewSet):
    """POST /api/images/generations: OpenAI's ImagesResponse; an `image` makes it an edit."""

    @charged_schema(
        "Generate or edit (AIGNE Hub shape)",
        request=AigneRequestSerializer,
        response=ImagesResponseSerializer,
        tags=("vendors",),
    )
    def create(self, request: Request) -> Response:
        return self.charged(request, aigne_mapper, OPENAI_GENERATION)


# ---- Seed 003: a reseller, POST /api/v1/image/generation ----------------------------------


class ResellerRequestSerializer(GenerationRequestSerializer):
    """Seed 003's fields: OpenAI's generation fields; `partial_images` is documented there
    as a string (a quality-like value), so a non-integer is accepted and ignored."""

    partial_images = serializers.JSONField(required=False, allow_null=True)

    def validate_partial_images(self, value: Any) -> int | None:
        if value is not None and not isinstance(value, (int, str)) or isinstance(value, bool):
            raise InvalidRequest(
                "Invalid type for 'partial_images': expected an integer (or the seed's string form).",
                param="partial_images",
                code="invalid_type",
            )
        if isinstance(value, int):
            if not 0 <= value <= 3:
                raise InvalidRequest(
                    f"Invalid value: {value}. 'partial_images' must be between 0 and 3.",
                    param="partial_images",
                    code="invalid_value",
                )
            return value
        return None


RESELLER_DEFAULT_MODEL = "gpt-image-1.5"


def reseller_mapper(request: Request) -> GenerationRequest:
    fields = validated(ResellerRequestSerializer, request.data)
    return GenerationRequest(endpoint="/api/v1/image/generation", fields=fields, default_model=RESELLER_DEFAULT_MODEL)


RESELLER = Renderer(
    body=lambda request, job: reseller_body(job=job, base_url=base_url(request), request_id=request._request.request_id)
)


class ResellerViewSet(ChargedViewSet):
    """POST /api/v1/image/generation: `{code, data{urls, usage, expired, task_id,
    task_status}, message, request_id}`, errors in the same envelope (code = HTTP status,
    with OpenAI's error object beside it); `stream: true` answers OpenAI's event stream."""

    @charged_schema(
        "Generate (reseller shape)",
        request=ResellerRequestSerializer,
        response=ResellerResponseSerializer,
        tags=("vendors",),
        error_serializer=ResellerErrorSerializer,
    )
    def create(self, request: Request) -> Response:
        return self.charged(request, reseller_mapper, RESELLER)

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(getattr(response, "data", None), dict) and "error" in response.data:
            response.data = reseller_error_body(
                error=response.data["error"],
                status=response.status_code,
                request_id=getattr(self.request._request, "request_id", ""),
            )
        return response
