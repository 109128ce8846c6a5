"""OpenAPI annotations for the API views, applied at import time.

The views stay free of documentation code: this module decorates them from the
outside with drf-spectacular's `extend_schema_view`, so that every endpoint under
/v1 and /api has request and response schemas, the error envelope on its error
statuses and the bearer security scheme. `urls.py` imports it before serving
/v1/openapi.json; the schema is generated from these classes at request time.
"""
from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema,
                                   extend_schema_view, inline_serializer)
from rest_framework import serializers

from accounts import api as accounts_api
from billing import api as billing_api
from images import api as images_api
from images import vendors
from images.validation import GenerationRequestSerializer


class APIKeyScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <key>`, as the OpenAI clients send it."""

    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A tenant API key: `Authorization: Bearer sk-...`"}


# ---- The error envelope (core.errors renders every error this way) -------------

class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="e.g. invalid_request_error, authentication_error, insufficient_quota")
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


ERROR_DESCRIPTIONS = {
    400: "Invalid request (validation, moderation)",
    401: "Missing or invalid API key",
    402: "Insufficient credits or key budget exceeded",
    403: "The key may not do this",
    404: "Not found (another tenant's object is a 404 too)",
    409: "Idempotency-Key still in progress",
    429: "Rate limit or too many jobs in flight",
    500: "Server error",
    502: "The generation failed; nothing was charged",
    503: "Queue unavailable; nothing was charged",
    504: "Still generating after the wait limit",
}


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {s: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[s]) for s in statuses}


AUTH_ERRORS = (401, 429, 500)
CHARGED_ERRORS = (400, 401, 402, 403, 409, 429, 500, 502, 503, 504)


# ---- Response bodies --------------------------------------------------------------

class ImageDataSerializer(serializers.Serializer):
    url = serializers.URLField(required=False, help_text="Signed link, readable without the key")
    b64_json = serializers.CharField(required=False)
    revised_prompt = serializers.CharField(required=False)


class ImageUsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    input_tokens_details = inline_serializer("InputTokensDetails", {
        "text_tokens": serializers.IntegerField(), "image_tokens": serializers.IntegerField()})


class ImagesResponseSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="Unix seconds")
    data = ImageDataSerializer(many=True)
    background = serializers.CharField(required=False, help_text="GPT-image models only")
    output_format = serializers.CharField(required=False, help_text="GPT-image models only")
    size = serializers.CharField(required=False, help_text="GPT-image models only")
    quality = serializers.CharField(required=False, help_text="GPT-image models only")
    usage = ImageUsageSerializer(required=False, help_text="GPT-image models only")


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
    result = ImagesResponseSerializer(allow_null=True)
    error = ErrorDetailSerializer(allow_null=True)


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="model")
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelSerializer(many=True)


class APIKeyObjectSerializer(serializers.Serializer):
    object = serializers.CharField(default="api_key")
    id = serializers.CharField(help_text="The key's prefix")
    name = serializers.CharField()
    created_at = serializers.IntegerField()
    last_used_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True)
    revoked = serializers.BooleanField()
    allowed_models = serializers.ListField(child=serializers.CharField())
    rpm_limit = serializers.IntegerField(allow_null=True)
    monthly_credit_limit = serializers.IntegerField(allow_null=True)
    is_admin = serializers.BooleanField()
    key = serializers.CharField(required=False, help_text="The raw key: only in the creation response, once")


class APIKeyListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = APIKeyObjectSerializer(many=True)


class BalanceSerializer(serializers.Serializer):
    object = serializers.CharField(default="balance")
    balance = serializers.IntegerField(help_text="credits")
    held = serializers.IntegerField(help_text="credits reserved by jobs in flight")
    available = serializers.IntegerField(help_text="credits")
    currency = serializers.CharField(default="credits")


class UsageRowSerializer(serializers.Serializer):
    day = serializers.CharField(required=False, help_text="when group_by=day")
    model = serializers.CharField(required=False, help_text="when group_by=model")
    key = serializers.CharField(required=False, allow_null=True, help_text="when group_by=key")
    requests = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    refused = serializers.IntegerField()
    images = serializers.IntegerField()
    pixels = serializers.IntegerField()
    credits = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    object = serializers.CharField(default="usage")
    start = serializers.DateField()
    end = serializers.DateField()
    group_by = serializers.ChoiceField(choices=["day", "model", "key"])
    currency = serializers.CharField(default="credits")
    totals = inline_serializer("UsageTotals", {
        "requests": serializers.IntegerField(), "images": serializers.IntegerField(),
        "pixels": serializers.IntegerField(), "credits": serializers.IntegerField()})
    data = UsageRowSerializer(many=True)


class VisionImageSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="vision.image")
    created = serializers.IntegerField()
    data = inline_serializer("VisionImageData", {"url": serializers.URLField(), "b64_json": serializers.CharField()},
                             many=True)


class ResellerResponseSerializer(serializers.Serializer):
    code = serializers.IntegerField(help_text="0 on success, else the HTTP status")
    message = serializers.CharField()
    request_id = serializers.CharField()
    data = inline_serializer("ResellerData", {
        "urls": serializers.ListField(child=serializers.URLField()),
        "usage": inline_serializer("ResellerUsage", {
            "images": serializers.IntegerField(), "seconds": serializers.FloatField(),
            "input_tokens": serializers.IntegerField(), "output_tokens": serializers.IntegerField(),
            "total_tokens": serializers.IntegerField()}),
        "expired": serializers.DateTimeField(), "task_id": serializers.CharField(),
        "task_status": serializers.CharField()}, allow_null=True)


class ResellerErrorSerializer(serializers.Serializer):
    code = serializers.IntegerField(help_text="The HTTP status")
    data = serializers.JSONField(allow_null=True)
    message = serializers.CharField()
    request_id = serializers.CharField()
    error = ErrorDetailSerializer()


# ---- Request bodies that have no serializer of their own --------------------------

class ImageEditFormSerializer(serializers.Serializer):
    image = serializers.ListField(child=serializers.FileField(), help_text="`image` or `image[]`: up to 16 files")
    mask = serializers.FileField(required=False)
    prompt = serializers.CharField()
    model = serializers.CharField(required=False)
    n = serializers.IntegerField(required=False)
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


class ImageVariationFormSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="A square PNG under 4 MB")
    model = serializers.CharField(required=False)
    n = serializers.IntegerField(required=False)
    size = serializers.CharField(required=False)
    response_format = serializers.ChoiceField(choices=["url", "b64_json"], required=False)
    user = serializers.CharField(required=False)


class AigneGenerationRequestSerializer(GenerationRequestSerializer):
    image = serializers.ListField(child=serializers.CharField(), required=False,
                                  help_text="URL, base64 or data URI (or a list): makes the call an edit")


IDEMPOTENCY = OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
                               description="Replays the first answer for 24 hours instead of charging twice")
PREFER = OpenApiParameter("Prefer", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
                          description="`respond-async`: answer 202 with the task at once")
ASYNC_202 = {202: OpenApiResponse(TaskSerializer, description="Accepted (Prefer: respond-async); poll the task")}
EXAMPLE = OpenApiExample("dall-e-2", value={"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256"},
                         request_only=True)


def charged(summary: str, *, request, response, tags: list[str], extra_errors: tuple[int, ...] = ()):
    return extend_schema(
        summary=summary, tags=tags, request=request, parameters=[IDEMPOTENCY, PREFER],
        responses={200: response, **ASYNC_202, **errors(*CHARGED_ERRORS, *extra_errors)})


extend_schema_view(post=charged(
    "Create an image", request=GenerationRequestSerializer, tags=["images"],
    response=OpenApiResponse(ImagesResponseSerializer,
                             description="The images; with `stream: true` a text/event-stream instead"),
))(images_api.ImageGenerationView)
extend_schema_view(post=charged(
    "Edit images", request={"multipart/form-data": ImageEditFormSerializer}, tags=["images"],
    response=ImagesResponseSerializer))(images_api.ImageEditView)
extend_schema_view(post=charged(
    "Create a variation", request={"multipart/form-data": ImageVariationFormSerializer}, tags=["images"],
    response=ImagesResponseSerializer))(images_api.ImageVariationView)
extend_schema_view(post=charged(
    "Generate (AlphaEdge vision shape)", request=GenerationRequestSerializer, tags=["vendors"],
    response=VisionImageSerializer))(vendors.VisionGenerateView)
extend_schema_view(post=charged(
    "Generate or edit (AIGNE Hub shape)", request=AigneGenerationRequestSerializer, tags=["vendors"],
    response=ImagesResponseSerializer))(vendors.AigneGenerationView)
extend_schema_view(post=extend_schema(
    summary="Generate (reseller shape)", tags=["vendors"], request=GenerationRequestSerializer,
    parameters=[IDEMPOTENCY, PREFER],
    responses={200: ResellerResponseSerializer, **ASYNC_202,
               **{s: OpenApiResponse(ResellerErrorSerializer, description=ERROR_DESCRIPTIONS[s])
                  for s in CHARGED_ERRORS}}))(vendors.ResellerGenerationView)

extend_schema_view(
    get=extend_schema(summary="Read a task", tags=["tasks"], responses={200: TaskSerializer, **errors(404, *AUTH_ERRORS)}),
    delete=extend_schema(summary="Cancel a task (releases its hold)", tags=["tasks"],
                         responses={200: TaskSerializer, **errors(400, 404, *AUTH_ERRORS)}),
)(images_api.TaskDetailView)
extend_schema_view(get=extend_schema(
    summary="List models", tags=["models"], responses={200: ModelListSerializer, **errors(*AUTH_ERRORS)},
))(images_api.ModelListView)
extend_schema_view(get=extend_schema(
    summary="Read a model", tags=["models"], operation_id="v1_models_get", responses={200: ModelSerializer, **errors(404, *AUTH_ERRORS)},
))(images_api.ModelDetailView)
extend_schema_view(get=extend_schema(
    summary="Download an image by its signed link", tags=["images"], auth=[],
    responses={(200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="PNG, JPEG or WebP bytes"),
               **errors(404)},
))(images_api.ImageFileView)
extend_schema(exclude=True)(images_api.UnknownRouteView)

extend_schema_view(
    get=extend_schema(summary="List the tenant's keys", tags=["keys"],
                      description="Needs an admin key (or an owner's session).",
                      responses={200: APIKeyListSerializer, **errors(403, *AUTH_ERRORS)}),
    post=extend_schema(summary="Create a key (the raw key is in this answer only)", tags=["keys"],
                       request=accounts_api.KeyCreateSerializer,
                       responses={201: APIKeyObjectSerializer, **errors(400, 403, *AUTH_ERRORS)}),
)(accounts_api.KeyListView)
extend_schema_view(delete=extend_schema(
    summary="Revoke a key", tags=["keys"], responses={200: APIKeyObjectSerializer, **errors(403, 404, *AUTH_ERRORS)},
))(accounts_api.KeyDetailView)

extend_schema_view(get=extend_schema(
    summary="The tenant's balance in credits", tags=["billing"], responses={200: BalanceSerializer, **errors(*AUTH_ERRORS)},
))(billing_api.BalanceView)
extend_schema_view(get=extend_schema(
    summary="Usage grouped by day, model or key", tags=["billing"],
    parameters=[
        OpenApiParameter("start", OpenApiTypes.DATE, required=False, description="default: 29 days before end"),
        OpenApiParameter("end", OpenApiTypes.DATE, required=False, description="default: today (UTC)"),
        OpenApiParameter("group_by", OpenApiTypes.STR, enum=["day", "model", "key"], required=False),
        OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], required=False),
    ],
    responses={200: OpenApiResponse(UsageSerializer, description="JSON, or text/csv with format=csv"),
               **errors(400, *AUTH_ERRORS)},
))(billing_api.UsageView)
