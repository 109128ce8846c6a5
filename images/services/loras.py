"""LoRA adapters (issue 23): the operator's catalog and a request's `loras`.

Torch-free (house style rule 4): the web tier resolves a request's adapters to paths
and surcharges here; only images.backends.local.adapters loads them.

Visibility. An enabled adapter is usable by a tenant when it is `public`, when the
tenant is in its `tenants`, or when the tenant `owner`s it. Anything else, an unknown
name included, is the same 400 `lora_not_found`: a tenant cannot learn that another
tenant's private adapter exists.

Compatibility. An adapter fits the model it names (`base_model`) or, when it names a
family instead, every model whose recorded family (capabilities["family"]) is that one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet

from accounts.models import Tenant
from core.errors import InvalidRequest, NotFound, PermissionDeniedError
from images.models import ImageModel, LoraAdapter, LoraUploadGrant

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SCALE_MIN, SCALE_MAX = -2.0, 2.0


class LoraPathError(ValueError):
    """An adapter path that is neither a .safetensors file nor a folder holding one."""


def lora_path_resolve(path: str) -> str:
    """The absolute location of an adapter: `path` as given when absolute, else under
    LORA_DIR. It must be a `.safetensors` file or a folder with at least one (diffusers
    reads `pytorch_lora_weights.safetensors`, or the folder's only .safetensors file).
    Raises LoraPathError."""
    location = Path(os.path.expanduser(path))
    if not location.is_absolute():
        location = Path(settings.LORA_DIR) / location
    if location.is_file():
        if location.suffix != ".safetensors":
            raise LoraPathError(f"{location} is not a .safetensors file")
        return str(location)
    if location.is_dir():
        if not any(child.suffix == ".safetensors" and child.is_file() for child in location.iterdir()):
            raise LoraPathError(f"the folder {location} holds no .safetensors file")
        return str(location)
    raise LoraPathError(f"{location} does not exist")


def lora_create(
    *,
    name: str,
    path: str,
    base_model: ImageModel | None = None,
    family: str = "",
    surcharge_credits: int = 0,
    tenants: list[Tenant] | None = None,
    trigger_words: str = "",
    owner: Tenant | None = None,
) -> LoraAdapter:
    """Add (or replace, by name) an adapter in the catalog. `tenants`: None or [] = every
    tenant may use it, else only those; `owner`: a tenant's own upload (visible to it
    only). Raises ValueError for a bad name, path, credits or a missing base."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError("the name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if base_model is None and not family:
        raise ValueError("name the base model (or the family) the adapter was trained for")
    if isinstance(surcharge_credits, bool) or not isinstance(surcharge_credits, int) or surcharge_credits < 0:
        raise ValueError("the surcharge must be a whole number of credits, 0 or more")
    resolved = lora_path_resolve(path)
    private = bool(tenants) or owner is not None
    with transaction.atomic():
        adapter, _ = LoraAdapter.objects.update_or_create(
            name=name,
            defaults={
                "path": resolved,
                "base_model": base_model,
                "family": family if base_model is None else "",
                "surcharge_credits": surcharge_credits,
                "trigger_words": trigger_words,
                "public": not private,
                "owner": owner,
                "enabled": True,
            },
        )
        adapter.tenants.set(tenants or [])
    return adapter


def loras_visible(*, tenant: Tenant, model: ImageModel | None = None) -> QuerySet[LoraAdapter]:
    """The enabled adapters `tenant` may use (module docstring), those fitting `model`
    only when one is given; ordered by name."""
    rows = LoraAdapter.objects.filter(enabled=True).filter(Q(public=True) | Q(tenants=tenant) | Q(owner=tenant))
    if model is not None:
        rows = rows.filter(_fits(model))
    return rows.select_related("base_model").distinct().order_by("name")


def _fits(model: ImageModel) -> Q:
    family = (model.capabilities or {}).get("family") or ""
    fits = Q(base_model=model)
    if family:
        fits |= Q(base_model__isnull=True, family=family)
    return fits


@dataclass(frozen=True)
class ResolvedLora:
    """A request's adapter: catalog name, absolute path ("" for an upload), scale,
    surcharge per image (credits), and an upload's storage name ("" otherwise)."""

    name: str
    path: str
    scale: float
    surcharge_credits: int
    storage: str = ""

    def as_json(self) -> dict[str, Any]:
        """What the job records for the worker (images.worker: LoraSpec, the upload
        fetched from `storage` by images.lora_files.lora_local_path)."""
        body = {"name": self.name, "path": self.path, "scale": self.scale}
        if self.storage:
            body["storage"] = self.storage
        return body


def loras_resolve(*, tenant: Tenant, model: ImageModel, entries: list[dict[str, Any]]) -> list[ResolvedLora]:
    """A request's validated `loras` (images.validation.LoraListField: names, scales)
    against the catalog: each must be visible to `tenant` (400 `lora_not_found`, the
    same for an unknown one) and fit `model` (400 `lora_incompatible`). One query."""
    if not entries:
        return []
    names = [entry["name"] for entry in entries]
    visible = {a.name: a for a in loras_visible(tenant=tenant).filter(name__in=names)}
    resolved = []
    for index, entry in enumerate(entries):
        adapter = visible.get(entry["name"])
        if adapter is None:
            raise InvalidRequest(
                f"The LoRA adapter '{entry['name']}' (loras[{index}]) does not exist or you do not have access to it.",
                param="loras",
                code="lora_not_found",
            )
        if not _fits_row(adapter, model):
            made_for = adapter.base_model.public_id if adapter.base_model_id else f"the {adapter.family} family"
            raise InvalidRequest(
                f"The LoRA adapter '{adapter.name}' (loras[{index}]) was made for {made_for}, "
                f"not for '{model.public_id}'.",
                param="loras",
                code="lora_incompatible",
            )
        resolved.append(
            ResolvedLora(adapter.name, adapter.path, entry["scale"], adapter.surcharge_credits, adapter.storage_name)
        )
    return resolved


def lora_body(adapter: LoraAdapter) -> dict[str, Any]:
    """An adapter as `GET /v1/loras` lists it (never its path or its grants)."""
    return {
        "object": "lora",
        "id": adapter.name,
        "base_model": adapter.base_model.public_id if adapter.base_model_id else None,
        "family": adapter.family or None,
        "trigger": adapter.trigger_words,
        "surcharge_credits": adapter.surcharge_credits,
        "owned_by": "organization" if adapter.owner_id else "system",
        "created": int(adapter.created_at.timestamp()),
    }


def loras_by_model(*, tenant: Tenant, models: list[ImageModel]) -> dict[str, list[dict[str, Any]]]:
    """For the playground: each model's public id -> the adapters `tenant` may use with
    it, as lora_body renders them (one query; the same fit rule as loras_resolve)."""
    rows = list(loras_visible(tenant=tenant))
    fitting: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        fitting[model.public_id] = [lora_body(adapter) for adapter in rows if _fits_row(adapter, model)]
    return fitting


def _fits_row(adapter: LoraAdapter, model: ImageModel) -> bool:
    """_fits for a loaded row: its base model, or, when it names none, its family."""
    if adapter.base_model_id:
        return adapter.base_model_id == model.pk
    family = (model.capabilities or {}).get("family") or ""
    return bool(family) and adapter.family == family


# ---- Tenants' own adapters (POST/DELETE /v1/loras) ---------------------------------------------


class UploadsDisabled(PermissionDeniedError):
    """403: LORA_TENANT_UPLOADS is off, or `granted` and this tenant has no grant."""

    code = "lora_uploads_disabled"


def upload_limit(*, tenant: Tenant) -> int | None:
    """How many adapters `tenant` may keep uploaded: None when it may not upload at all
    (LORA_TENANT_UPLOADS off, or `granted` without a LoraUploadGrant), else the grant's
    max_adapters or LORA_UPLOAD_MAX_PER_TENANT."""
    mode = settings.LORA_TENANT_UPLOADS
    if mode == "off":
        return None
    grant = LoraUploadGrant.objects.filter(tenant=tenant).first()
    if mode == "granted" and grant is None:
        return None
    if grant is not None and grant.max_adapters is not None:
        return grant.max_adapters
    return settings.LORA_UPLOAD_MAX_PER_TENANT


def upload_id(*, tenant: Tenant, name: str) -> str:
    """The catalog name (the `id` requests use) of `tenant`'s upload called `name`:
    `t<tenant id>:<name>`. Operators' names cannot hold ':', so an upload never takes
    (or reveals) an operator's or another tenant's name."""
    return f"t{tenant.pk}:{name}"


UPLOAD_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def lora_upload(*, tenant: Tenant, name: str, base: str, upload: BinaryIO, size: int) -> LoraAdapter:
    """Add `tenant`'s own adapter (or replace its upload of the same name): checks that
    uploads are allowed (403 lora_uploads_disabled), the name (400 `name`), the base model
    (404 `base` model_not_found when unknown or disabled), the size (413
    LORA_UPLOAD_MAX_BYTES), the file (400 `file` invalid_lora: images.lora_files), the
    tenant's count (400 too_many_loras); stores the file like images and returns the
    adapter, visible to `tenant` only, with no surcharge. A replaced upload's old file is
    deleted after the commit."""
    from images import selectors
    from images.lora_files import lora_file_delete, lora_file_save, lora_header_check
    from images.uploads import PayloadTooLarge

    limit = upload_limit(tenant=tenant)
    if limit is None:
        raise UploadsDisabled("Uploading LoRA adapters is not enabled for your organization.")
    if not isinstance(name, str) or not UPLOAD_NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            "'name' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            param="name",
            code="invalid_value",
        )
    model = selectors.image_model_get(public_id=base) if isinstance(base, str) and base else None
    if model is None:
        raise NotFound(
            f"The model '{base}' does not exist or you do not have access to it.", param="base", code="model_not_found"
        )
    if size > settings.LORA_UPLOAD_MAX_BYTES:
        raise PayloadTooLarge(
            f"The file is {size} bytes; LoRA adapters may be at most {settings.LORA_UPLOAD_MAX_BYTES} bytes.",
            param="file",
        )
    upload.seek(0)
    lora_header_check(upload, size=size)
    catalog_name = upload_id(tenant=tenant, name=name)
    replaced = LoraAdapter.objects.filter(name=catalog_name, owner=tenant).first()
    if replaced is None and LoraAdapter.objects.filter(owner=tenant).count() >= limit:
        raise InvalidRequest(
            f"Your organization already has {limit} LoRA adapters; delete one first (DELETE /v1/loras/{{id}}).",
            param="file",
            code="too_many_loras",
        )
    stored = lora_file_save(tenant_id=tenant.pk, upload=upload)
    try:
        with transaction.atomic():
            adapter, _ = LoraAdapter.objects.update_or_create(
                name=catalog_name,
                defaults={
                    "path": "",
                    "storage_name": stored,
                    "size_bytes": size,
                    "base_model": model,
                    "family": "",
                    "surcharge_credits": 0,
                    "trigger_words": "",
                    "public": False,
                    "owner": tenant,
                    "enabled": True,
                },
            )
            adapter.tenants.set([])
            if replaced is not None and replaced.storage_name and replaced.storage_name != stored:
                old = replaced.storage_name
                transaction.on_commit(lambda: lora_file_delete(old))
    except Exception:
        lora_file_delete(stored)
        raise
    return adapter


def lora_delete(*, tenant: Tenant, lora_id: str) -> LoraAdapter:
    """Delete `tenant`'s own upload `lora_id` and, after the commit, its file. Anything
    else (an operator's adapter, another tenant's, an unknown id) is 404 `id`. Jobs
    already queued with it fail (`lora_missing`) unless a worker holds a copy."""
    from images.lora_files import lora_file_delete

    adapter = LoraAdapter.objects.filter(name=lora_id, owner=tenant).first() if isinstance(lora_id, str) else None
    if adapter is None:
        raise NotFound(f"Your organization has no LoRA adapter '{lora_id}'.", param="id", code="lora_not_found")
    with transaction.atomic():
        adapter.delete()
        if adapter.storage_name:
            name = adapter.storage_name
            transaction.on_commit(lambda: lora_file_delete(name))
    return adapter
