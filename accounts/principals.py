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


def managed_tenant(*, auth, user, tenant_name: str | None, what: str) -> tuple[Tenant, APIKey | None]:
    """The tenant a management request acts on (/v1/keys, /v1/webhooks, /v1/loras: one
    rule for all three): an admin key's own tenant, or the one an owner's or admin
    member's session manages (`tenant_name`: the `?tenant=` choice for a user of several;
    accounts.selectors.tenant_managed_by). `auth` is the request's authentication (an
    APIKey or None), `what` names the managed things in the messages ("keys").
    Returns (tenant, the admin key or None for a session). Raises PermissionDeniedError
    (403 `insufficient_permissions`) for a non-admin key or a session that manages no
    tenant, TenantSuspended for a suspended tenant reached by session (a key's tenant
    was checked at authentication)."""
    from accounts.selectors import tenant_managed_by
    from core.errors import PermissionDeniedError

    key = auth if isinstance(auth, APIKey) else None
    if key is not None:
        if not key.is_admin:
            raise PermissionDeniedError(
                f"Managing {what} needs an admin key or an owner's session.", code="insufficient_permissions"
            )
        return key.tenant, key
    tenant = tenant_managed_by(user=user, tenant_name=tenant_name)
    if tenant is None:
        raise PermissionDeniedError(
            f"Only a tenant's owners and admins may manage its {what}.", code="insufficient_permissions"
        )
    tenant_active_check(tenant=tenant)
    return tenant, None
