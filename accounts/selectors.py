"""Reads for tenants and keys; everything tenant-owned is filtered by tenant."""

from __future__ import annotations

import re

from accounts.models import APIKey, Membership, Tenant

TENANT_NAME_MAX = Tenant._meta.get_field("name").max_length


def key_list(*, tenant: Tenant) -> list[APIKey]:
    return list(APIKey.objects.filter(tenant=tenant).order_by("-created"))


# What a key prefix can be (the library draws 8 letters and digits); anything else names no key.
KEY_PREFIX = re.compile(r"[A-Za-z0-9]{1,8}")


def key_get(*, tenant: Tenant, prefix: str) -> APIKey | None:
    if not KEY_PREFIX.fullmatch(prefix):
        return None
    return APIKey.objects.filter(tenant=tenant, prefix=prefix).first()


def tenant_managed_by(*, user, tenant_name: str | None = None) -> Tenant | None:
    """The tenant a signed-in user may manage keys of (owner or admin role)."""
    memberships = Membership.objects.filter(
        user=user, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN], tenant__status=Tenant.Status.ACTIVE
    ).select_related("tenant")
    if tenant_name:
        if len(tenant_name) > TENANT_NAME_MAX or "\x00" in tenant_name:
            return None  # names no tenant (and PostgreSQL refuses NUL in a query)
        memberships = memberships.filter(tenant__name=tenant_name)
    membership = memberships.order_by("tenant_id").first()
    return membership.tenant if membership else None
