"""Bearer API-key authentication: the tenant comes from the key."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from accounts.key_cache import api_key_cache_put, api_key_cache_refresh_due, api_key_cached
from accounts.models import APIKey, Tenant
from accounts.principals import tenant_active_check
from core.errors import InvalidAPIKey

# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def api_key_accepts(key: APIKey, raw: str) -> bool:
    """Whether the key row `key` (cached or read) lets the raw key `raw` in: not
    revoked, not expired, and `raw` matches its hash."""
    return not (key.revoked or key.has_expired) and key.is_valid(raw)


def last_used_stale(key: APIKey, now) -> bool:
    """Whether a request at `now` must write the key's last_used_at (at most once per
    LAST_USED_RESOLUTION)."""
    return key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION


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
        return self.authenticate_raw(parts[1].strip())

    def authenticate_raw(self, raw: str):
        """(principal, key) for a raw API key however it came (the Bearer header, or a
        vendor's own header: HeaderKeyAuthentication); 401 or 403 as for the Bearer."""
        key = self._verify(raw)
        if key is None:
            raise InvalidAPIKey(
                f"Incorrect API key provided: {mask_key(raw)}. You can obtain a key from your platform operator."
            )
        tenant = key.tenant
        tenant_active_check(tenant=tenant)
        now = timezone.now()
        if last_used_stale(key, now):
            APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
            api_key_cache_put(key=key)  # (else the cached row would write it on every request)
        return TenantPrincipal(tenant), key

    @staticmethod
    def _verify(raw: str) -> APIKey | None:
        """The key row for `raw` (its tenant loaded), or None when no key matches or it
        is revoked or expired. The row comes from the cache when it is there
        (accounts.key_cache: changes take effect at once, at worst within
        API_KEY_CACHE_SECONDS; a row past half that is read from the database again and
        cached anew); the secret is checked against its hash either way."""
        prefix, _, secret = raw.partition(".")
        if not prefix or not secret or len(raw) > 200:
            return None
        key = api_key_cached(prefix=prefix)
        if key is None or api_key_cache_refresh_due(key):  # (due: read again before it expires)
            try:
                key = APIKey.objects.select_related("tenant").get(prefix=prefix)
            except APIKey.DoesNotExist:
                return None
            api_key_cache_put(key=key)
        if not api_key_accepts(key, raw):
            return None
        return key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class HeaderKeyAuthentication(APIKeyAuthentication):
    """The API key in a vendor's own header, for clients written for that vendor (the
    Midjourney proxy's `mj-api-secret`, images/midjourney.py): a subclass names the
    header's META key in `header`. Consulted only without an Authorization header, which
    wins when both come; the key is checked exactly as a Bearer key is."""

    header = ""

    def authenticate(self, request: Request):
        raw = request.META.get(self.header, "").strip() if self.header else ""
        if not raw or request.META.get("HTTP_AUTHORIZATION"):
            return None
        return self.authenticate_raw(raw)
