"""Writes for tenants and keys."""
from __future__ import annotations

from django.db import transaction

from accounts.models import APIKey, Tenant


def tenant_create(*, name: str) -> Tenant:
    return Tenant.objects.create(name=name)


def api_key_create(*, tenant: Tenant, name: str = "default", created_by: str = "") -> tuple[APIKey, str]:
    """Create a key; the raw key is returned once and never stored."""
    key, raw = APIKey.objects.create_key(tenant=tenant, name=name, created_by=created_by)
    return key, raw


@transaction.atomic
def tenant_create_with_key(*, name: str, created_by: str = "") -> tuple[Tenant, APIKey, str]:
    tenant = tenant_create(name=name)
    key, raw = api_key_create(tenant=tenant, name="default", created_by=created_by)
    return tenant, key, raw
