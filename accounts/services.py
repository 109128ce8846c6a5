"""Writes for tenants and keys."""
from __future__ import annotations

from datetime import datetime

from django.db import transaction

from accounts.models import APIKey, Tenant


def tenant_create(*, name: str) -> Tenant:
    return Tenant.objects.create(name=name)


def api_key_create(*, tenant: Tenant, name: str = "default", created_by: str = "", rpm_limit: int | None = None,
                   expiry_date: datetime | None = None, allowed_models: list[str] | None = None,
                   monthly_credit_limit: int | None = None, is_admin: bool = False) -> tuple[APIKey, str]:
    """Create a key; the raw key is returned once and never stored (only prefix + hash)."""
    key, raw = APIKey.objects.create_key(
        tenant=tenant, name=name[:50] or "default", created_by=created_by, rpm_limit=rpm_limit,
        expiry_date=expiry_date, allowed_models=allowed_models or [], monthly_credit_limit=monthly_credit_limit,
        is_admin=is_admin)
    return key, raw


def api_key_revoke(*, key: APIKey) -> APIKey:
    """Revoke for good: revoked keys get 401 and cannot be reactivated."""
    if not key.revoked:
        key.revoked = True
        key.save(update_fields=["revoked"])
    return key


def tenant_update(*, tenant: Tenant, moderation_level: str | None = None, status: str | None = None,
                  rpm_limit: int | None = None, max_concurrent_jobs: int | None = None) -> Tenant:
    fields = []
    for name, value in (("moderation_level", moderation_level), ("status", status), ("rpm_limit", rpm_limit),
                        ("max_concurrent_jobs", max_concurrent_jobs)):
        if value is not None:
            setattr(tenant, name, value)
            fields.append(name)
    if fields:
        tenant.save(update_fields=fields)
    return tenant


@transaction.atomic
def tenant_create_with_key(*, name: str, created_by: str = "") -> tuple[Tenant, APIKey, str]:
    tenant = tenant_create(name=name)
    key, raw = api_key_create(tenant=tenant, name="default", created_by=created_by)
    return tenant, key, raw
