"""OpenAPI pieces shared by every app's views: the error envelope and the standard
error responses (drf-spectacular). The envelope is what core.errors renders."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="e.g. invalid_request_error, authentication_error, insufficient_quota")
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class ErrorWithQuotaDetailSerializer(ErrorDetailSerializer):
    """A 402's error object: the envelope's four fields and its numbers (integer
    credits; core.errors.InsufficientCredits, billing.errors.KeyBudgetExceeded)."""

    required = serializers.IntegerField(
        allow_null=True, help_text="The request's price (null: a key budget refused before pricing)"
    )
    available = serializers.IntegerField(
        required=False, help_text="insufficient_quota: balance minus held; negative while credits are owed"
    )
    held = serializers.IntegerField(required=False, help_text="insufficient_quota: reserved by jobs in flight")
    top_up_url = serializers.URLField(required=False, help_text="insufficient_quota: where to buy credits, when on")
    budget_key = serializers.CharField(required=False, help_text="key_budget_exceeded: the budget's key prefix")
    limit = serializers.IntegerField(required=False, help_text="key_budget_exceeded: the monthly budget")
    spent = serializers.IntegerField(
        required=False, help_text="key_budget_exceeded: spent or held this month by that key and its subtree"
    )


class ErrorWithQuotaSerializer(serializers.Serializer):
    error = ErrorWithQuotaDetailSerializer()


ERROR_DESCRIPTIONS = {
    400: "Invalid request (validation, moderation)",
    401: "Missing or invalid API key",
    402: "Insufficient credits or key budget exceeded",
    403: "The key may not do this, or the organization is suspended",
    404: "Not found (another tenant's object is a 404 too)",
    405: "Method not allowed",
    409: "Idempotency-Key still in progress",
    410: "The job was cancelled or ran out of time (or its images expired): not retryable",
    413: "Request or file too large",
    415: "Unsupported media type",
    429: "Rate limit or too many jobs in flight",
    500: "Server error",
    502: "The generation failed; nothing was charged",
    503: "Queue or model unavailable; nothing was charged",
    504: "Still generating after the wait limit",
}


def errors(*statuses: int, serializer=ErrorSerializer) -> dict[int, OpenApiResponse]:
    """Error responses for `extend_schema(responses=...)`, all in the envelope (a 402's
    error object with its numbers: ErrorWithQuotaSerializer)."""

    def shape(status: int):
        return ErrorWithQuotaSerializer if status == 402 and serializer is ErrorSerializer else serializer

    return {s: OpenApiResponse(shape(s), description=ERROR_DESCRIPTIONS[s]) for s in statuses}


AUTH_ERRORS = (401, 403, 405, 429, 500)
CHARGED_ERRORS = (400, 401, 402, 403, 405, 409, 410, 413, 415, 429, 500, 502, 503, 504)
