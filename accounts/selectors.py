"""Reads for tenants and keys; everything tenant-owned is filtered by tenant."""
from __future__ import annotations

from accounts.models import APIKey, Membership, Tenant


def key_list(*, tenant: Tenant) -> list[APIKey]:
    return list(APIKey.objects.filter(tenant=tenant).order_by("-created"))


def key_get(*, tenant: Tenant, prefix: str) -> APIKey | None:
    return APIKey.objects.filter(tenant=tenant, prefix=prefix).first()


def tenant_managed_by(*, user, tenant_name: str | None = None) -> Tenant | None:
    """The tenant a signed-in user may manage keys of (owner or admin role)."""
    memberships = Membership.objects.filter(user=user, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN],
                                            tenant__status=Tenant.Status.ACTIVE).select_related("tenant")
    if tenant_name:
        memberships = memberships.filter(tenant__name=tenant_name)
    membership = memberships.order_by("tenant_id").first()
    return membership.tenant if membership else None
