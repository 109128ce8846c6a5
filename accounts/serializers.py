"""/v1/keys bodies: the create request and the key object. The OpenAPI schema is
generated from these same classes (accounts.api), so what is documented is what is sent."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from accounts.models import APIKey


class UnixTimeField(serializers.IntegerField):
    """A datetime rendered as whole Unix seconds (OpenAI's `created_at` style)."""

    def to_representation(self, value) -> int:
        return int(value.timestamp())


class APIKeyObjectSerializer(serializers.Serializer):
    """An API key as /v1/keys shows it. `key` (the raw key) is in the creation answer
    only: pass it as context `raw_key`; it is stored nowhere."""

    object = serializers.CharField(default="api_key", read_only=True)
    id = serializers.CharField(source="prefix", read_only=True, help_text="The key's prefix")
    name = serializers.CharField(read_only=True)
    created_at = UnixTimeField(source="created", read_only=True)
    last_used_at = UnixTimeField(allow_null=True, read_only=True)
    expires_at = UnixTimeField(source="expiry_date", allow_null=True, read_only=True)
    revoked = serializers.BooleanField(read_only=True)
    allowed_models = serializers.ListField(child=serializers.CharField(), read_only=True)
    rpm_limit = serializers.IntegerField(allow_null=True, read_only=True)
    monthly_credit_limit = serializers.IntegerField(allow_null=True, read_only=True)
    is_admin = serializers.BooleanField(read_only=True)
    key = serializers.CharField(
        required=False, read_only=True, help_text="The raw key: only in the creation response, once"
    )

    def to_representation(self, instance: APIKey) -> dict[str, Any]:
        body = super().to_representation(instance)
        body["object"] = "api_key"
        body.pop("key", None)
        raw = self.context.get("raw_key")
        if raw is not None:
            body["key"] = raw
        return body


@extend_schema_serializer(many=False)  # one list object, not an array of them, in the list action's schema
class APIKeyListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list", read_only=True)
    data = APIKeyObjectSerializer(many=True, read_only=True)

    def to_representation(self, instance: list[APIKey]) -> dict[str, Any]:
        return {"object": "list", "data": APIKeyObjectSerializer(instance, many=True).data}


class KeyCreateSerializer(serializers.Serializer):
    """POST /v1/keys. A key creating a key: omitted (or null) limits are the creating
    key's, and none may be looser than its own (accounts.services.api_key_create)."""

    name = serializers.CharField(max_length=50, required=False, default="default")
    rpm_limit = serializers.IntegerField(min_value=1, max_value=2**31 - 1, required=False, allow_null=True)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=50)
    monthly_credit_limit = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, allow_null=True)
    is_admin = serializers.BooleanField(
        required=False, default=False, help_text="May manage the tenant's keys; only an owner's session may ask"
    )

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("must be in the future")
        return value
