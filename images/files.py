"""Encoding, storing and signed links for generated images (no torch here).

Storage is Django's storage API only (settings.STORAGES["default"]): local files in the
embedded mode, an S3-compatible bucket in a distributed deployment. Nothing here or
elsewhere assumes a local path: names are storage names, bytes go through open/save.

Links. An image's link is always our own signed `/v1/files/<token>` (one hour, like
OpenAI's). On an object store that link answers with a redirect to a presigned URL of
the object, valid for what is left of the token's hour: the bytes never pass through the
web tier, the bucket stays private, and the checks that must happen at download time
(signature, expiry, a suspended tenant's links stopping at once, purged images) still
happen on our side. docs/deploy.md says why this was chosen over handing out presigned
URLs directly.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from core.errors import APIError, ServiceUnavailable

if TYPE_CHECKING:
    from PIL.Image import Image

    from images.models import GeneratedImage

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_SALT = "images.link"


def image_encode(image: Image, *, output_format: str, compression: int = 100) -> bytes:
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


class ImagesExpired(APIError):
    """The job's images were deleted by the retention policy (RETENTION_DAYS)."""

    status_code = 410
    type = "invalid_request_error"
    code = "images_expired"
    should_retry = False


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"


def job_images_expired(job) -> bool:
    """Whether the retention purge deleted this succeeded job's images (it marks the job
    with error_code "images_expired"; images/services/retention.py)."""
    return job.error_code == ImagesExpired.code


def job_images_check(job) -> None:
    """Raise ImagesExpired (410) for a job whose images were purged, instead of
    rendering an answer without images or with broken links."""
    if job_images_expired(job):
        raise ImagesExpired(
            f"The images of job {job.pk} were deleted after {settings.RETENTION_DAYS} days "
            "(the retention period); generate them again."
        )


def storage_is_remote() -> bool:
    """True when images live in an object store (settings: AWS_STORAGE_BUCKET_NAME)."""
    return bool(settings.AWS_STORAGE_BUCKET_NAME)


def _missing(exc: BaseException) -> bool:
    """A read error that means "no such object" (local: FileNotFoundError; S3: 404/NoSuchKey)."""
    if isinstance(exc, FileNotFoundError):
        return True
    response = getattr(exc, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return code in ("404", "NoSuchKey", "NotFound")


def image_read(image: GeneratedImage) -> bytes:
    """The stored bytes: ImagesExpired when the object is gone, StorageUnavailable (503)
    when the store cannot be reached; never an unhandled 500."""
    try:
        with default_storage.open(image.file, "rb") as handle:
            return handle.read()
    except Exception as exc:
        if _missing(exc):
            raise ImagesExpired(
                f"This image is no longer stored (images are kept {settings.RETENTION_DAYS} days)."
            ) from exc
        raise StorageUnavailable(
            "The image store is unavailable; retry shortly.", headers={"Retry-After": "5"}
        ) from exc


def image_delete_files(names: list[str]) -> int:
    """Delete stored files by name; a missing one is fine. Returns how many calls
    succeeded (deleting an absent name counts). Never raises."""
    done = 0
    for name in names:
        try:
            default_storage.delete(name)
            done += 1
        except Exception:  # OSError locally; botocore's errors on a store that is away
            pass
    return done


def image_presigned_url(name: str, *, expires_in: int) -> str:
    """A time-limited GET URL for a stored object (object stores only).

    Presigning is computed locally (no request to the store). With
    S3_PUBLIC_ENDPOINT_URL the URL names the address clients reach the store at; the
    signature covers the host, so it is signed for that address, not rewritten."""
    expires_in = max(60, int(expires_in))
    if not settings.S3_PUBLIC_ENDPOINT_URL:
        return default_storage.url(name, expire=expires_in)
    client = _public_client()
    location = (default_storage.location or "").strip("/")
    key = f"{location}/{name}" if location else name
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": default_storage.bucket_name, "Key": key}, ExpiresIn=expires_in
    )


_public_clients: dict[tuple, object] = {}


def _public_client():
    import boto3
    from botocore.config import Config

    config_key = (settings.S3_PUBLIC_ENDPOINT_URL, settings.AWS_ACCESS_KEY_ID, settings.AWS_S3_REGION_NAME)
    if config_key not in _public_clients:
        style = getattr(settings, "AWS_S3_ADDRESSING_STYLE", None)
        _public_clients[config_key] = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.S3_PUBLIC_ENDPOINT_URL,
            region_name=settings.AWS_S3_REGION_NAME,
            aws_access_key_id=settings.AWS_ACCESS_KEY_ID,
            aws_secret_access_key=settings.AWS_SECRET_ACCESS_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": style} if style else {}),
        )
    return _public_clients[config_key]


def image_token(image: GeneratedImage) -> str:
    """A signed, expiring token naming one image of one tenant; not guessable."""
    return signing.TimestampSigner(salt=_SALT).sign_object(
        {"i": image.id.hex, "t": image.job.tenant_id}, compress=False
    )


def image_token_read(token: str) -> tuple[str, int] | None:
    """(image id hex, tenant id) for a valid unexpired token, else None."""
    found = image_token_read_with_age(token)
    return (found[0], found[1]) if found else None


def image_token_read_with_age(token: str) -> tuple[str, int, float] | None:
    """(image id hex, tenant id, seconds left) for a valid unexpired token, else None."""
    try:
        signer = signing.TimestampSigner(salt=_SALT)
        value = signer.unsign_object(token, max_age=settings.IMAGE_URL_TTL_SECONDS)
        left = settings.IMAGE_URL_TTL_SECONDS - (time.time() - _signed_at(token))
        return str(value["i"]), int(value["t"]), left
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None


def _signed_at(token: str) -> float:
    """The timestamp a TimestampSigner token carries ("value:timestamp:signature")."""
    return float(signing.b62_decode(token.rsplit(":", 2)[-2]))


def image_url(image: GeneratedImage, *, base_url: str) -> str:
    base = settings.PUBLIC_BASE_URL or base_url.rstrip("/")
    return f"{base}/v1/files/{image_token(image)}"


THUMBNAIL_EDGE = 256  # px: the longest side of a dashboard thumbnail
THUMBNAIL_QUALITY = 80  # WebP quality (0-100)


def image_thumbnail_name(file_name: str) -> str:
    """Where the thumbnail of the stored image `file_name` is cached: beside it,
    `images/ab/<job>-0.png` -> `images/ab/<job>-0.thumb.webp` (the retention purge
    deletes it with the original)."""
    stem = file_name.rsplit(".", 1)[0]
    return f"{stem}.thumb.webp"


def image_thumbnail(image: GeneratedImage) -> bytes:
    """A small WebP copy of a stored image (longest side THUMBNAIL_EDGE px, never
    enlarged), made on first use and cached in the storage under
    `image_thumbnail_name`. The caller checks the tenant's access first (it reads any
    image). Raises ImagesExpired when the original is gone, StorageUnavailable (503)
    when the store cannot be reached, like `image_read`."""
    from PIL import Image as PILImage

    name = image_thumbnail_name(image.file)
    try:
        with default_storage.open(name, "rb") as handle:
            return handle.read()
    except Exception as exc:
        if not _missing(exc):
            raise StorageUnavailable(
                "The image store is unavailable; retry shortly.", headers={"Retry-After": "5"}
            ) from exc
    with PILImage.open(io.BytesIO(image_read(image))) as original:
        original.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE))
        picture = original.convert("RGBA" if "A" in original.getbands() else "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY)
    data = buffer.getvalue()
    try:
        if not default_storage.exists(name):
            default_storage.save(name, ContentFile(data))
    except Exception:  # a cache only: the next view makes it again
        pass
    return data
