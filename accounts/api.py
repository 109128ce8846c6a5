"""/v1/keys: a tenant manages its own keys, with an admin key or an owner's session."""
from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.authentication import APIKeyAuthentication
from core.errors import NotFound, PermissionDeniedError
from accounts.models import APIKey, Tenant


def key_object(key: APIKey, raw: str | None = None) -> dict[str, Any]:
    body = {"object": "api_key", "id": key.prefix, "name": key.name,
            "created_at": int(key.created.timestamp()),
            "last_used_at": int(key.last_used_at.timestamp()) if key.last_used_at else None,
            "expires_at": int(key.expiry_date.timestamp()) if key.expiry_date else None,
            "revoked": key.revoked, "allowed_models": key.allowed_models, "rpm_limit": key.rpm_limit,
            "monthly_credit_limit": key.monthly_credit_limit, "is_admin": key.is_admin}
    if raw is not None:
        body["key"] = raw  # shown once, in this response only
    return body


class KeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=50, required=False, default="default")
    rpm_limit = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=50)
    monthly_credit_limit = serializers.IntegerField(min_value=0, required=False, allow_null=True)

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("must be in the future")
        return value


class KeyManagementMixin:
    authentication_classes = [APIKeyAuthentication, SessionAuthentication]

    def managed_tenant(self, request: Request) -> tuple[Tenant, str]:
        key = request.auth if isinstance(request.auth, APIKey) else None
        if key is not None:
            if not key.is_admin:
                raise PermissionDeniedError("Managing keys needs an admin key or an owner's session.",
                                            code="insufficient_permissions")
            return key.tenant, f"key:{key.prefix}"
        tenant = selectors.tenant_managed_by(user=request.user, tenant_name=request.query_params.get("tenant"))
        if tenant is None:
            raise PermissionDeniedError("Only a tenant's owners and admins may manage its keys.",
                                        code="insufficient_permissions")
        return tenant, request.user.get_username()


class KeyListView(KeyManagementMixin, APIView):
    """GET /v1/keys lists the tenant's keys; POST creates one (the key is in the answer, once)."""

    def get(self, request: Request) -> Response:
        tenant, _ = self.managed_tenant(request)
        return Response({"object": "list", "data": [key_object(k) for k in selectors.key_list(tenant=tenant)]})

    def post(self, request: Request) -> Response:
        tenant, actor = self.managed_tenant(request)
        serializer = KeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, raw = services.api_key_create(
            tenant=tenant, name=data.get("name") or "default", created_by=actor, rpm_limit=data.get("rpm_limit"),
            expiry_date=data.get("expires_at"), allowed_models=data.get("allowed_models"),
            monthly_credit_limit=data.get("monthly_credit_limit"))
        return Response(key_object(key, raw), status=201)


class KeyDetailView(KeyManagementMixin, APIView):
    """DELETE /v1/keys/{id} revokes a key of the caller's tenant."""

    def delete(self, request: Request, prefix: str) -> Response:
        tenant, _ = self.managed_tenant(request)
        key = selectors.key_get(tenant=tenant, prefix=prefix)
        if key is None:
            raise NotFound("No such key.", param="id", code="not_found")
        return Response(key_object(services.api_key_revoke(key=key)))
