"""/v1/keys: a tenant manages its own keys, with an admin key or an owner's session.

An owner's (or admin member's) session manages the tenant without limits. An admin key
manages it within its own scope: the keys it creates inherit or narrow every limit of
its own and are revoked with it (accounts.services.api_key_create / api_key_revoke).
"""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import selectors, services
from accounts.authentication import APIKeyAuthentication
from accounts.models import APIKey, Tenant
from accounts.principals import managed_tenant
from accounts.serializers import APIKeyListSerializer, APIKeyObjectSerializer, KeyCreateSerializer
from core.errors import NotFound
from core.schema import AUTH_ERRORS, errors


@dataclass(frozen=True)
class KeyManager:
    """Who manages keys in this request: the tenant, the audit name, and the admin key
    when it is a key (None for an owner's session)."""

    tenant: Tenant
    actor: str
    key: APIKey | None


def _errors(*statuses: int):
    return errors(*sorted({*statuses, *AUTH_ERRORS}))


TENANT_PARAMETER = OpenApiParameter(
    "tenant",
    OpenApiTypes.STR,
    required=False,
    description="Sessions only: which of the signed-in user's tenants (default: the first one they manage)",
)
PREFIX_PARAMETER = OpenApiParameter(
    "prefix", OpenApiTypes.STR, OpenApiParameter.PATH, description="The key's id (its prefix)"
)


class KeyViewSet(viewsets.ViewSet):
    """GET /v1/keys lists the tenant's keys; POST creates one (the raw key is in the
    answer, once); DELETE /v1/keys/{prefix} revokes one, and the keys it created."""

    authentication_classes = [APIKeyAuthentication, SessionAuthentication]
    lookup_field = "prefix"
    # Whatever is between the slashes reaches the view; one that is no key's prefix is a 404.
    lookup_value_regex = "[^/]+"

    def manager(self, request: Request) -> KeyManager:
        tenant, key = managed_tenant(
            auth=request.auth, user=request.user, tenant_name=request.query_params.get("tenant"), what="keys"
        )
        return KeyManager(tenant, f"key:{key.prefix}" if key else request.user.get_username(), key)

    def list(self, request: Request) -> Response:
        manager = self.manager(request)
        return Response(APIKeyListSerializer(selectors.key_list(tenant=manager.tenant, manager=manager.key)).data)

    def create(self, request: Request) -> Response:
        manager = self.manager(request)
        serializer = KeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, raw = services.api_key_create(
            tenant=manager.tenant,
            name=data.get("name") or "default",
            created_by=manager.actor,
            created_by_user=request.user if manager.key is None else None,
            rpm_limit=data.get("rpm_limit"),
            expiry_date=data.get("expires_at"),
            allowed_models=data.get("allowed_models"),
            monthly_credit_limit=data.get("monthly_credit_limit"),
            is_admin=data.get("is_admin", False),
            parent=manager.key,
        )
        return Response(APIKeyObjectSerializer(key, context={"raw_key": raw}).data, status=201)

    def destroy(self, request: Request, prefix: str) -> Response:
        manager = self.manager(request)
        key = selectors.key_get(tenant=manager.tenant, prefix=prefix)
        if key is not None and manager.key is not None and not selectors.key_manages(manager=manager.key, key=key):
            key = None  # a key wider than the caller's own scope looks like a missing one
        if key is None:
            raise NotFound("No such key.", param="id", code="not_found")
        return Response(APIKeyObjectSerializer(services.api_key_revoke(key=key)).data)


extend_schema_view(
    list=extend_schema(
        summary="List the tenant's keys",
        tags=["keys"],
        operation_id="v1_keys_list",
        description="Needs an admin key (or an owner's session).",
        parameters=[TENANT_PARAMETER],
        responses={200: APIKeyListSerializer, **_errors(403)},
    ),
    create=extend_schema(
        summary="Create a key (the raw key is in this answer only)",
        tags=["keys"],
        operation_id="v1_keys_create",
        parameters=[TENANT_PARAMETER],
        description="A key creating a key: omitted limits are its own, none may be looser "
        "(403 `key_scope_exceeded`), and the new key is revoked with it.",
        request=KeyCreateSerializer,
        responses={201: APIKeyObjectSerializer, **_errors(400, 403)},
    ),
    destroy=extend_schema(
        summary="Revoke a key",
        tags=["keys"],
        operation_id="v1_keys_destroy",
        parameters=[PREFIX_PARAMETER, TENANT_PARAMETER],
        description="Revokes the keys it created too.",
        responses={200: APIKeyObjectSerializer, **_errors(403, 404)},
    ),
)(KeyViewSet)
