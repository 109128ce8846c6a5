"""Who is asking: the `Caller` every entry point hands to the services.

An API request is its key's tenant; a dashboard request is the signed-in member's
tenant (their first membership, as the dashboard shows it). Both go through the same
rules; only the rate-limit identity differs (see `Caller.identity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from accounts.errors import TenantSuspended
from accounts.models import APIKey, Membership, Tenant


@dataclass
class Caller:
    """tenant: whose credits and limits apply; api_key: the key (None for a dashboard
    member); member: the signed-in Membership (None for an API key); request_id: for
    logs and moderation messages; rate_counted: True once this request was counted
    against the rate limits (the DRF throttle counts API and dashboard requests on
    entry, so the services do not count them twice); ratelimit_headers: filled by the
    rate-limit check, copied onto the response."""

    tenant: Tenant
    api_key: APIKey | None = None
    member: Membership | None = None
    request_id: str = ""
    rate_counted: bool = False
    ratelimit_headers: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """The rate-limit bucket of the one asking: `k:<key prefix>` for a key,
        `m:<membership id>` for a dashboard member. A member counts like a key of
        their own (DEFAULT_MEMBER_RPM), and every identity also counts against the
        tenant's limit, so the playground cannot outrun the API's tenant limit."""
        if self.api_key is not None:
            return f"k:{self.api_key.prefix}"
        return f"m:{self.member.pk if self.member else 0}"

    @property
    def idempotency_scope(self) -> str:
        """Idempotency-Key values are per tenant (a key and the dashboard share them)."""
        return f"tenant:{self.tenant.pk}"

    @property
    def actor(self) -> str:
        """For ledger notes and audit fields."""
        if self.api_key is not None:
            return f"key:{self.api_key.prefix}"
        return f"member:{self.member.user_id}" if self.member else "system"


def caller_for_member(*, user, request_id: str = "") -> Caller | None:
    """The dashboard's caller for a signed-in user: their first membership's tenant."""
    membership = (
        Membership.objects.filter(user=user).select_related("tenant").order_by("tenant_id").first()
        if getattr(user, "is_authenticated", False)
        else None
    )
    if membership is None:
        return None
    return Caller(tenant=membership.tenant, member=membership, request_id=request_id)


def tenant_is_active(tenant: Tenant) -> bool:
    """The one rule for "is this tenant active?" (an operator suspends a tenant with
    `manage.py tenant_update --suspend` or the admin): its status is `active`."""
    return tenant.status == Tenant.Status.ACTIVE


def tenant_active_check(*, tenant: Tenant) -> None:
    """Refuse a suspended tenant: raises TenantSuspended (403 `tenant_suspended`). Every
    path that serves a tenant calls it: API-key authentication, the dashboard's pages and
    its API, key and webhook management by session, and `generation_create`. (Signed
    image links are read without a caller; `images.selectors.image_get` applies
    `tenant_is_active` to the link's tenant instead.)"""
    if not tenant_is_active(tenant):
        raise TenantSuspended()
