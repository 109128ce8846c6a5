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
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet

from accounts.models import Tenant
from core.errors import InvalidRequest
from images.models import ImageModel, LoraAdapter

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
    """A request's adapter: catalog name, absolute path, scale, surcharge per image (credits)."""

    name: str
    path: str
    scale: float
    surcharge_credits: int

    def as_json(self) -> dict[str, Any]:
        """What the job records for the worker (images.worker: LoraSpec)."""
        return {"name": self.name, "path": self.path, "scale": self.scale}


def loras_resolve(*, tenant: Tenant, model: ImageModel, entries: list[dict[str, Any]]) -> list[ResolvedLora]:
    """A request's validated `loras` (images.validation.LoraListField: names, scales)
    against the catalog: each must be visible to `tenant` (400 `lora_not_found`, the
    same for an unknown one) and fit `model` (400 `lora_incompatible`). One query."""
    if not entries:
        return []
    names = [entry["name"] for entry in entries]
    visible = {a.name: a for a in loras_visible(tenant=tenant).filter(name__in=names)}
    family = (model.capabilities or {}).get("family") or ""
    resolved = []
    for index, entry in enumerate(entries):
        adapter = visible.get(entry["name"])
        if adapter is None:
            raise InvalidRequest(
                f"The LoRA adapter '{entry['name']}' (loras[{index}]) does not exist or you do not have access to it.",
                param="loras",
                code="lora_not_found",
            )
        fits = adapter.base_model_id == model.pk if adapter.base_model_id else bool(family) and adapter.family == family
        if not fits:
            made_for = adapter.base_model.public_id if adapter.base_model_id else f"the {adapter.family} family"
            raise InvalidRequest(
                f"The LoRA adapter '{adapter.name}' (loras[{index}]) was made for {made_for}, "
                f"not for '{model.public_id}'.",
                param="loras",
                code="lora_incompatible",
            )
        resolved.append(ResolvedLora(adapter.name, adapter.path, entry["scale"], adapter.surcharge_credits))
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
        "created": int(adapter.created_at.timestamp()),
    }
