"""Writes for tenants and keys."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction

from accounts.models import APIKey, Tenant
from core.errors import InvalidRequest, PermissionDeniedError


def tenant_create(*, name: str) -> Tenant:
    return Tenant.objects.create(name=name)


def key_models_validate(*, model_ids: list[str] | None) -> list[str]:
    """The model ids a key may use, stripped and de-duplicated in order; an id that names
    no model in the registry (enabled or not) is a 400 naming it."""
    from images.models import ImageModel

    if model_ids is not None and (not isinstance(model_ids, list) or not all(isinstance(m, str) for m in model_ids)):
        raise InvalidRequest("'allowed_models' must be a list of model ids.", param="allowed_models",
                             code="invalid_value")
    wanted = list(dict.fromkeys(m.strip() for m in (model_ids or []) if m.strip()))
    known = set(ImageModel.objects.filter(public_id__in=wanted).values_list("public_id", flat=True))
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise InvalidRequest(f"Unknown model(s): {', '.join(repr(m) for m in unknown)}.", param="allowed_models",
                             code="model_not_found")
    return wanted


def _beyond_scope(param: str, detail: str) -> PermissionDeniedError:
    return PermissionDeniedError(f"A key can only create keys within its own scope: {detail}", param=param,
                                 code="key_scope_exceeded")


@dataclass(frozen=True)
class KeyLimits:
    rpm_limit: int | None
    expiry_date: datetime | None
    allowed_models: list[str]
    monthly_credit_limit: int | None


def key_scope_narrow(*, parent: APIKey, limits: KeyLimits) -> KeyLimits:
    """The limits of a key that `parent` creates: each one omitted (None or empty) is the
    parent's own, and none may be looser than the parent's, or it is a 403
    `key_scope_exceeded` naming the parameter. rpm compares with the parent's effective
    limit (its own, else DEFAULT_KEY_RPM; 0 = none)."""
    models = limits.allowed_models or list(parent.allowed_models)
    if parent.allowed_models:
        outside = [m for m in models if m not in parent.allowed_models]
        if outside:
            raise _beyond_scope("allowed_models", f"this key may not use {', '.join(repr(m) for m in outside)}.")
    rpm = limits.rpm_limit if limits.rpm_limit is not None else parent.rpm_limit
    parent_rpm = parent.rpm_limit or settings.DEFAULT_KEY_RPM
    if parent_rpm and (rpm or settings.DEFAULT_KEY_RPM) > parent_rpm:
        raise _beyond_scope("rpm_limit", f"'rpm_limit' may be at most {parent_rpm}.")
    monthly = limits.monthly_credit_limit if limits.monthly_credit_limit is not None else parent.monthly_credit_limit
    if parent.monthly_credit_limit is not None and monthly > parent.monthly_credit_limit:
        raise _beyond_scope("monthly_credit_limit",
                            f"'monthly_credit_limit' may be at most {parent.monthly_credit_limit}.")
    expiry = limits.expiry_date or parent.expiry_date
    if parent.expiry_date is not None and expiry > parent.expiry_date:
        raise _beyond_scope("expires_at", f"'expires_at' may be no later than {parent.expiry_date.isoformat()}.")
    return KeyLimits(rpm_limit=rpm, expiry_date=expiry, allowed_models=models, monthly_credit_limit=monthly)


def api_key_create(*, tenant: Tenant, name: str = "default", created_by: str = "", rpm_limit: int | None = None,
                   expiry_date: datetime | None = None, allowed_models: list[str] | None = None,
                   monthly_credit_limit: int | None = None, is_admin: bool = False,
                   parent: APIKey | None = None) -> tuple[APIKey, str]:
    """Create a key; the raw key is returned once and never stored (only prefix + hash).

    Every way of making a key comes here (/v1/keys, the dashboard, the admin site,
    `key_create`), so model ids are checked once (400 `model_not_found`). `parent` is
    the admin key making this one through /v1/keys: the new key is confined to the
    parent's scope (`key_scope_narrow`), is never an admin key itself, and is revoked
    with its parent. Owners' sessions and operators pass no parent: they are the
    tenant's and the installation's authority, not a key's."""
    limits = KeyLimits(rpm_limit=rpm_limit, expiry_date=expiry_date,
                       allowed_models=key_models_validate(model_ids=allowed_models),
                       monthly_credit_limit=monthly_credit_limit)
    if parent is not None:
        if parent.tenant_id != tenant.pk or not parent.is_admin or parent.revoked:
            raise PermissionDeniedError("Managing keys needs an admin key or an owner's session.",
                                        code="insufficient_permissions")
        if is_admin:
            raise _beyond_scope("is_admin", "a key cannot create admin keys; an owner's session can.")
        limits = key_scope_narrow(parent=parent, limits=limits)
    key, raw = APIKey.objects.create_key(
        tenant=tenant, name=name[:50] or "default", created_by=created_by, rpm_limit=limits.rpm_limit,
        expiry_date=limits.expiry_date, allowed_models=limits.allowed_models,
        monthly_credit_limit=limits.monthly_credit_limit, is_admin=is_admin, parent=parent)
    return key, raw


@transaction.atomic
def api_key_revoke(*, key: APIKey) -> APIKey:
    """Revoke for good: revoked keys get 401 and cannot be reactivated. The keys this
    key created (and theirs, down the tree) are revoked with it: a key made by a key
    never outlives the one that made it."""
    if not key.revoked:
        key.revoked = True
        key.save(update_fields=["revoked"])
    parents = [key.pk]
    while parents:
        children = list(APIKey.objects.filter(parent_id__in=parents, revoked=False).values_list("pk", flat=True))
        APIKey.objects.filter(pk__in=children).update(revoked=True)
        parents = children
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
