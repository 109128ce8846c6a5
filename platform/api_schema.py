"""OpenAPI annotations that live outside their views: the bearer scheme and the billing
endpoints (plain APIViews). The ViewSets (images, vendors, keys) carry their own
`extend_schema` annotations beside their actions; shared error pieces are in
core/schema.py. `urls.py` imports this module before serving /v1/openapi.json.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers

from billing import api as billing_api
from core.schema import AUTH_ERRORS, errors

# /docs/ lists the OpenAI-compatible endpoints first, the platform's own extensions next
# and the vendor-shaped endpoints last: Swagger UI groups operations by tag in the order
# of the document's root `tags` (set from this list by `tags_ordered`), and
# `operation_order` sorts the paths the same way for readers of the JSON.
TAGS = [
    {"name": "images", "description": "OpenAI Images API: generations, edits, variations (and signed image links)."},
    {"name": "models", "description": "OpenAI Models API; each model carries its `pricing` (extension)."},
    {"name": "tasks", "description": "Extension: asynchronous jobs (`Prefer: respond-async`), polled or cancelled."},
    {"name": "billing", "description": "Extension: balance, usage and vouchers, in integer credits."},
    {"name": "keys", "description": "Extension: API keys made by admin keys."},
    {"name": "webhooks", "description": "Extension: the tenant's webhook endpoints and deliveries."},
    {"name": "vendors", "description": "Vendor-shaped endpoints (the shapes of other image APIs)."},
]
OPENAI_PATHS = ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations", "/v1/models")
VENDOR_PATHS = ("/api/", "/v1/vision/")


def operation_order(endpoint: tuple) -> tuple:
    """drf-spectacular's SORT_OPERATIONS key: OpenAI's paths, then the other /v1 paths,
    then the vendor shapes; alphabetical (drf-spectacular's own order) within each."""
    from drf_spectacular.plumbing import alpha_operation_sorter

    path = endpoint[0]
    group = 0 if path.startswith(OPENAI_PATHS) else 2 if path.startswith(VENDOR_PATHS) else 1
    return (group, alpha_operation_sorter(endpoint))


def tags_ordered(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook: the document's root `tags` in TAGS' order
    (tags no operation uses are left out; one missing from TAGS goes last)."""
    used = {tag for item in result.get("paths", {}).values() for op in item.values() for tag in op.get("tags", [])}
    known = [tag for tag in TAGS if tag["name"] in used]
    names = {tag["name"] for tag in known}
    result["tags"] = known + [{"name": name} for name in sorted(used - names)]
    return result


class APIKeyScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <key>`, as the OpenAI clients send it."""

    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A tenant API key: `Authorization: Bearer sk-...`"}


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
    totals = inline_serializer(
        "UsageTotals",
        {
            "requests": serializers.IntegerField(),
            "images": serializers.IntegerField(),
            "pixels": serializers.IntegerField(),
            "credits": serializers.IntegerField(),
        },
    )
    data = UsageRowSerializer(many=True)


extend_schema_view(
    get=extend_schema(
        summary="The tenant's balance in credits",
        tags=["billing"],
        responses={200: BalanceSerializer, **errors(*AUTH_ERRORS)},
    )
)(billing_api.BalanceView)
extend_schema_view(
    get=extend_schema(
        summary="Usage grouped by day, model or key",
        tags=["billing"],
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATE, required=False, description="default: 29 days before end"),
            OpenApiParameter("end", OpenApiTypes.DATE, required=False, description="default: today (UTC)"),
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=["day", "model", "key"], required=False),
            OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], required=False),
        ],
        responses={
            (200, "application/json"): OpenApiResponse(UsageSerializer, description="JSON (the default)"),
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV, with format=csv"),
            **errors(400, *AUTH_ERRORS),
        },
    )
)(billing_api.UsageView)
