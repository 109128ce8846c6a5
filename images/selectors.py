"""Reads. Everything tenant-owned is read through a selector that takes the tenant."""

from __future__ import annotations

import copy
import threading
import time
import uuid

from django.db.models.signals import post_delete, post_save

from accounts.models import Tenant
from accounts.principals import tenant_is_active
from images.models import GeneratedImage, ImageModel, Job


def image_model_list(*, kind: str | None = None) -> list[ImageModel]:
    """Enabled models by public id, their Price rows prefetched (for `model_pricing`);
    only those of `kind` (ImageModel.Kind: e.g. generators, without the tool models of
    issue 26) when given."""
    models = ImageModel.objects.filter(enabled=True)
    if kind is not None:
        models = models.filter(kind=kind)
    return list(models.order_by("public_id").prefetch_related("prices"))


def model_pricing(model: ImageModel):
    """The model's price per image for every kind, size and quality its API profile
    accepts (images/profiles.py), as billing.selectors.PriceLine items; combinations
    without a price row are left out (refused as `price_not_configured`). A tool model
    (issue 26: an upscaler, background remover, segmenter or captioner) has one line, its
    job kind at any size (`size` and `quality` "any"): its price rows are per image,
    whatever the input's size (images/tool_models.py). A control tool model (ControlNet,
    depth estimator, IP-Adapter) has none: it runs inside a generator's job, priced by
    the generator's rows."""
    from billing.selectors import model_price_list
    from images.profiles import PROFILES
    from images.tool_models import MODEL_KIND_OF_JOB

    if model.kind != ImageModel.Kind.GENERATOR:
        kinds = tuple(job for job, served_by in MODEL_KIND_OF_JOB.items() if served_by == model.kind)
        return model_price_list(model=model, kinds=kinds, sizes=("any",), qualities=("any",), rows=model.prices.all())
    profile = PROFILES[model.profile]
    return model_price_list(
        model=model, kinds=profile.kinds, sizes=profile.sizes, qualities=profile.qualities, rows=model.prices.all()
    )


# An enabled model's row is reused by this process for at most this many seconds (issue 20:
# one statement less per request). Saving or deleting a model through the ORM (the admin,
# manage.py model_add, images/services/models.py) forgets them all in this process at once;
# another process, or a bulk `update()` elsewhere, is seen within MODEL_CACHE_SECONDS, as
# prices are (billing.services.PRICE_CACHE_SECONDS; docs/configuration.md).
MODEL_CACHE_SECONDS = 5.0
_model_cache: dict[str, tuple[float, ImageModel]] = {}
_model_cache_lock = threading.Lock()


def image_model_get(*, public_id: str) -> ImageModel | None:
    """The enabled model `public_id`, or None (unknown or disabled: never cached, so a
    name a caller makes up costs a read and no memory). The caller gets its own copy of
    the cached row (a shallow copy: do not mutate its JSON fields), at most
    MODEL_CACHE_SECONDS old."""
    now = time.monotonic()
    cached = _model_cache.get(public_id)
    if cached is None or cached[0] <= now:
        model = ImageModel.objects.filter(public_id=public_id, enabled=True).first()
        if model is None:
            return None
        with _model_cache_lock:
            _model_cache[public_id] = cached = (now + MODEL_CACHE_SECONDS, model)
    return copy.copy(cached[1])


def image_model_cache_clear(**ignored) -> None:
    """Forget every cached model row (a signal receiver: ImageModel saves and deletes;
    call it after a bulk `update()` of models), now and again once the current
    transaction commits."""
    from django.db import transaction

    with _model_cache_lock:
        _model_cache.clear()

    def clear_again() -> None:
        with _model_cache_lock:
            _model_cache.clear()

    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(clear_again)


for _signal in (post_save, post_delete):
    _signal.connect(image_model_cache_clear, sender=ImageModel, dispatch_uid=f"image-model-cache-{_signal}")


def model_ids_known(ids: list[str]) -> set[str]:
    """The ids in `ids` that name a model in the registry, enabled or not (one query).
    accounts checks a key's allowed_models with it (registered in ImagesConfig.ready)."""
    return set(ImageModel.objects.filter(public_id__in=ids).values_list("public_id", flat=True))


def job_get(*, tenant: Tenant, job_id: str | uuid.UUID) -> Job | None:
    try:
        job_uuid = uuid.UUID(str(job_id))
    except ValueError:
        return None
    return Job.objects.select_related("model").filter(tenant=tenant, pk=job_uuid).first()


def image_get(*, tenant_id: int, image_id: str) -> GeneratedImage | None:
    """The image behind a signed link, or None: none of that tenant's, or the tenant is
    not active. The link is read without an API key, so this is the only place that
    stops a suspended tenant's links serving for the rest of their lifetime."""
    try:
        image_uuid = uuid.UUID(image_id)
    except ValueError:
        return None
    image = GeneratedImage.objects.select_related("job__tenant").filter(pk=image_uuid, job__tenant_id=tenant_id).first()
    return image if image is not None and tenant_is_active(image.job.tenant) else None


def jobs_in_flight_count(*, tenant: Tenant) -> int:
    """The tenant's queued and running jobs."""
    return Job.objects.filter(tenant=tenant, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).count()


def job_list_recent(*, tenant: Tenant, limit: int = 50) -> list[Job]:
    """The tenant's newest jobs with their model and images."""
    return list(
        Job.objects.filter(tenant=tenant)
        .select_related("model")
        .prefetch_related("images")
        .order_by("-created_at")[:limit]
    )


def jobs_by_status() -> dict[str, int]:
    """Every tenant's jobs counted by status (operator overview)."""
    from django.db.models import Count

    return {row["status"]: row["n"] for row in Job.objects.values("status").annotate(n=Count("id"))}


def gpu_time_by_model(*, since) -> list[dict]:
    """GPU seconds and job counts per model since `since` (operator overview)."""
    from django.db.models import Count, Sum

    rows = (
        Job.objects.filter(created_at__gte=since, gpu_ms__isnull=False)
        .values("model__public_id")
        .annotate(gpu_ms=Sum("gpu_ms"), jobs=Count("id"))
        .order_by("-gpu_ms")
    )
    return [{"model": r["model__public_id"], "jobs": r["jobs"], "seconds": round(r["gpu_ms"] / 1000, 1)} for r in rows]
