"""OpenAPI pieces of the charged endpoints (drf-spectacular): the Idempotency-Key,
Prefer and Cancel-After headers, the 202/stream answers and `charged_schema`, plus the
multipart request bodies of edits and variations as the schema shows them.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers

from core.schema import CHARGED_ERRORS, errors
from images.serializers import (
    ImagesResponseSerializer,
    TaskSerializer,
)

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
    "dall-e-2",
    value={"model": "dall-e-2", "prompt": "a red circle on a white background", "size": "256x256"},
    request_only=True,
)
