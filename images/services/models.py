"""Writes to the model registry that must keep a row's capabilities true to its source.

What a model can do (`ImageModel.capabilities`: family, edit modes, negative prompts,
size rule) is read from its source's model_index.json (images/families_catalog.py,
torch-free). The web tier refuses what a family cannot do before any credit is held
(images.profiles.capabilities_check), so a row pointed at another folder must have its
capabilities computed again: every path that sets a source (the admin's form, `manage.py
model_add`, code) goes through here, and records which source they were computed from
(`capabilities_source`). A row changed some other way (a bulk update, SQL) is caught
twice: its stale capabilities are read as unknown, and the worker that runs it corrects
the row (images.worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from images.backends.base import PipelineSource
from images.families_catalog import FamilyError, FamilySpec, recognise_folder
from images.models import ImageModel
from images.selectors import image_model_cache_clear


def model_folder_resolve(*, source: str) -> Path:
    """The folder of `source`: absolute, under MODEL_DIR, relative to this directory, or a
    hub id already in the local hub cache (never downloaded here). Raises FamilyError
    saying where it looked."""
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [Path(settings.MODEL_DIR) / source, path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if source.count("/") == 1 and not path.is_absolute():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "model_index.json")
        except Exception:
            cached = None
        if isinstance(cached, str):
            return Path(cached).parent
        raise FamilyError(
            f"{source} looks like a hub id but is not in the local hub cache; download it first "
            f"(huggingface-cli download {source}) or pass its folder"
        )
    raise FamilyError(f"{source}: no such folder (relative paths are looked up under MODEL_DIR={settings.MODEL_DIR})")


def model_capabilities_compute(*, source: str) -> tuple[FamilySpec, dict[str, Any]]:
    """(family, capabilities) of a model source (a folder or a cached hub id). Raises
    FamilyError when it cannot be found or served, with the reason."""
    return recognise_folder(model_folder_resolve(source=source))


def model_capabilities_refresh(*, model: ImageModel) -> dict[str, Any]:
    """Compute the capabilities of the row's current source and store them with that
    source (`capabilities_source`), in one conditional UPDATE (a concurrent change of the
    source wins: its own refresh follows). When the source cannot be read here (a web
    host without the model files, an unknown architecture), {} is stored: unknown,
    nothing refused up front, and the worker that loads it records what it is. Returns
    what was stored; FamilyError is not raised (`model_capabilities_compute` says why)."""
    try:
        _, capabilities = model_capabilities_compute(source=model.source)
    except (FamilyError, OSError):
        capabilities = {}
    ImageModel.objects.filter(pk=model.pk, source=model.source).update(
        capabilities=capabilities, capabilities_source=model.source
    )
    image_model_cache_clear()
    model.capabilities, model.capabilities_source = capabilities, model.source
    return capabilities


def model_source_set(*, model: ImageModel, source: str) -> dict[str, Any]:
    """Point a model row at another source (a folder or a cached hub id) and recompute
    its capabilities from it (`model_capabilities_refresh`). Returns the capabilities."""
    ImageModel.objects.filter(pk=model.pk).update(source=source)
    image_model_cache_clear()
    model.source = source
    return model_capabilities_refresh(model=model)


def pipeline_source(model: ImageModel) -> PipelineSource:
    """The model row's source as the backend loads it (images/backends/base.PipelineSource):
    a folder under MODEL_DIR, an absolute path, or a hub id (downloads only with
    MODEL_ALLOW_DOWNLOADS)."""
    source = model.source
    candidate = Path(source) if Path(source).is_absolute() else Path(settings.MODEL_DIR) / source
    if candidate.exists():
        source = str(candidate)
    return PipelineSource(source=source, dtype=model.dtype, local_files_only=not settings.MODEL_ALLOW_DOWNLOADS)
