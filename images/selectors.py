"""Reads. Everything tenant-owned is read through a selector that takes the tenant."""
from __future__ import annotations

import uuid

from accounts.models import Tenant
from images.models import GeneratedImage, ImageModel, Job


def image_model_list() -> list[ImageModel]:
    return list(ImageModel.objects.filter(enabled=True).order_by("public_id"))


def image_model_get(*, public_id: str) -> ImageModel | None:
    return ImageModel.objects.filter(public_id=public_id, enabled=True).first()


def job_get(*, tenant: Tenant, job_id: str | uuid.UUID) -> Job | None:
    try:
        job_uuid = uuid.UUID(str(job_id))
    except ValueError:
        return None
    return Job.objects.select_related("model").filter(tenant=tenant, pk=job_uuid).first()


def image_get(*, tenant_id: int, image_id: str) -> GeneratedImage | None:
    try:
        image_uuid = uuid.UUID(image_id)
    except ValueError:
        return None
    return GeneratedImage.objects.select_related("job").filter(pk=image_uuid, job__tenant_id=tenant_id).first()
