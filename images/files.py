"""Encoding, storing and signed links for generated images (no torch here)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

if TYPE_CHECKING:
    from PIL.Image import Image

    from images.models import GeneratedImage

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_SALT = "images.link"


def image_encode(image: "Image", *, output_format: str, compression: int = 100) -> bytes:
    """PNG (lossless; compression ignored), or JPEG/WEBP at quality = compression (0-100)."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=1)
    elif output_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=max(1, compression))
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=compression, lossless=compression == 100)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buffer.getvalue()


def image_save(*, job_id: str, index: int, data: bytes, output_format: str) -> str:
    """Store bytes under MEDIA_ROOT (or the configured storage); returns the storage name."""
    name = f"images/{str(job_id)[:2]}/{job_id}-{index}.{'jpg' if output_format == 'jpeg' else output_format}"
    return default_storage.save(name, ContentFile(data))


def image_read(image: "GeneratedImage") -> bytes:
    with default_storage.open(image.file, "rb") as handle:
        return handle.read()


def image_delete_files(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            pass


def image_token(image: "GeneratedImage") -> str:
    """A signed, expiring token naming one image of one tenant; not guessable."""
    return signing.TimestampSigner(salt=_SALT).sign_object(
        {"i": image.id.hex, "t": image.job.tenant_id}, compress=False)


def image_token_read(token: str) -> tuple[str, int] | None:
    """(image id hex, tenant id) for a valid unexpired token, else None."""
    try:
        value = signing.TimestampSigner(salt=_SALT).unsign_object(token, max_age=settings.IMAGE_URL_TTL_SECONDS)
        return str(value["i"]), int(value["t"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None


def image_url(image: "GeneratedImage", *, base_url: str) -> str:
    base = settings.PUBLIC_BASE_URL or base_url.rstrip("/")
    return f"{base}/v1/files/{image_token(image)}"
