"""Input images given by reference (seed 002's `image` field): a data URI, bare base64,
or an http(s) URL. URLs go through core.http_fetch (resolved once, public addresses
only unless IMAGE_FETCH_ALLOW_PRIVATE, pinned connection, no proxy or redirect, one
deadline of IMAGE_FETCH_TIMEOUT_SECONDS, bounded size).
"""

from __future__ import annotations

import base64
import binascii

from core.errors import InvalidRequest
from core.http_fetch import FetchRefused, FetchTooLarge, http_fetch


def image_bytes_from_reference(value: str, *, param: str, max_bytes: int) -> bytes:
    """A data URI, bare base64, or an http(s) URL → the raw bytes (bounded)."""
    value = value.strip()
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if ";base64" not in header:
            raise InvalidRequest(f"'{param}' data URIs must be base64.", param=param, code="invalid_image")
        value = payload
    elif value.startswith(("http://", "https://")):
        return _fetch(value, param=param, max_bytes=max_bytes)
    if len(value) > max_bytes * 4 // 3 + 16:
        raise InvalidRequest(
            f"'{param}' is larger than {max_bytes // (1024 * 1024)} MB.", param=param, code="file_too_large"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"'{param}' must be an http(s) URL, a data URI or base64 image data.", param=param, code="invalid_image"
        ) from None


def _fetch(url: str, *, param: str, max_bytes: int) -> bytes:
    try:
        return http_fetch(url, max_bytes=max_bytes, accept="image/*", param=param).content
    except FetchTooLarge:
        raise InvalidRequest(
            f"The image in '{param}' is larger than {max_bytes // (1024 * 1024)} MB.",
            param=param,
            code="file_too_large",
        ) from None
    except FetchRefused as exc:
        raise InvalidRequest(exc.message, param=param, code="invalid_image_url") from None
