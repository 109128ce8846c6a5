"""Reads for tenants and keys; everything tenant-owned is filtered by tenant."""

from __future__ import annotations

import re

from accounts.models import APIKey, Membership, Tenant

TENANT_NAME_MAX = Tenant._meta.get_field("name").max_length


def key_list(*, tenant: Tenant, manager: APIKey | None = None) -> list[APIKey]:
    """The tenant's keys, newest first; with `manager` (an admin key), only those it
    may manage (`key_manages`)."""
    keys = APIKey.objects.filter(tenant=tenant).order_by("-created")
    if manager is not None and not key_is_unrestricted(manager):
        return [k for k in keys if k.pk in _subtree(manager)]
    return list(keys)


def key_is_unrestricted(key: APIKey) -> bool:
    """An admin key with no parent and none of a key's limits manages the whole tenant,
    as its owners do; any narrower admin key manages only itself and the keys it created
    (and theirs), so it cannot list or revoke keys wider than itself."""
    return (
        key.parent_id is None
        and not key.allowed_models
        and key.monthly_credit_limit is None
        and key.rpm_limit is None
        and key.expiry_date is None
    )


def _subtree(key: APIKey) -> set[int]:
    return key_subtree_ids(key=key)


def key_subtree_ids(*, key: APIKey) -> set[int]:
    """The ids of `key` and of every key below it (the keys it created, and theirs)."""
    found, frontier = {key.pk}, [key.pk]
    while frontier:
        frontier = list(APIKey.objects.filter(parent_id__in=frontier).values_list("pk", flat=True))
        found.update(frontier)
    return found


def key_lineage(*, key: APIKey) -> list[APIKey]:
    """`key` and the keys above it (the admin key that created it, and so on), root
    first: the keys whose monthly budget and rpm bound this one (a key's limits are
    ceilings for its whole subtree). Walks `parent`, which Django caches on each
    instance, so asking twice for the same key object costs no query."""
    chain = [key]
    while chain[-1].parent_id is not None and len(chain) < 64:  # (64: a cycle guard, never reached)
        chain.append(chain[-1].parent)
    return chain[::-1]


def key_manages(*, manager: APIKey, key: APIKey) -> bool:
    """Whether the admin key `manager` may see and revoke `key` (see key_is_unrestricted)."""
    return key.tenant_id == manager.tenant_id and (key_is_unrestricted(manager) or key.pk in _subtree(manager))


# What a key prefix can be (the library draws 8 letters and digits); anything else names no key.
KEY_PREFIX = re.compile(r"[A-Za-z0-9]{1,8}")


def key_get(*, tenant: Tenant, prefix: str) -> APIKey | None:
    if not KEY_PREFIX.fullmatch(prefix):
        return None
    return APIKey.objects.filter(tenant=tenant, prefix=prefix).first()


def tenant_managed_by(*, user, tenant_name: str | None = None) -> Tenant | None:
    """The tenant a signed-in user may manage keys and webhooks of (owner or admin
    role): the one named, else their first. It may be suspended: the caller refuses it
    with `accounts.principals.tenant_active_check` (403 `tenant_suspended`)."""
    memberships = Membership.objects.filter(
        user=user, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN]
    ).select_related("tenant")
    if tenant_name:
        if len(tenant_name) > TENANT_NAME_MAX or "\x00" in tenant_name:
            return None  # names no tenant (and PostgreSQL refuses NUL in a query)
        memberships = memberships.filter(tenant__name=tenant_name)
    membership = memberships.order_by("tenant_id").first()
    return membership.tenant if membership else None
