"""Bearer API-key authentication: the tenant comes from the key."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from accounts.models import APIKey, Tenant
from core.errors import InvalidAPIKey, PermissionDeniedError

# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def mask_key(raw: str) -> str:
    """'abcd1234.secret...' -> 'abcd***xyz' for messages; never log a full key."""
    if len(raw) <= 8:
        return "***"
    return f"{raw[:4]}***{raw[-3:]}"


class TenantPrincipal:
    """request.user for API calls: the key's tenant, authenticated."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.pk = None

    def __str__(self) -> str:
        return f"tenant:{self.tenant.name}"


class APIKeyAuthentication(BaseAuthentication):
    keyword = "bearer"

    def authenticate(self, request: Request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        parts = header.split(None, 1)
        if len(parts) != 2 or parts[0].lower() != self.keyword or not parts[1].strip():
            raise InvalidAPIKey("The Authorization header must be 'Bearer YOUR_KEY'.")
        raw = parts[1].strip()
        key = self._verify(raw)
        if key is None:
            raise InvalidAPIKey(
                f"Incorrect API key provided: {mask_key(raw)}. You can obtain a key from your platform operator."
            )
        tenant = key.tenant
        if tenant.status != Tenant.Status.ACTIVE:
            raise PermissionDeniedError(
                "This organization is suspended. Contact your platform operator.", code="tenant_suspended"
            )
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
            APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return TenantPrincipal(tenant), key

    @staticmethod
    def _verify(raw: str) -> APIKey | None:
        prefix, _, secret = raw.partition(".")
        if not prefix or not secret or len(raw) > 200:
            return None
        try:
            key = APIKey.objects.select_related("tenant").get(prefix=prefix)
        except APIKey.DoesNotExist:
            return None
        if key.revoked or key.has_expired or not key.is_valid(raw):
            return None
        return key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
