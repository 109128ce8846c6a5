"""Fetching input images by URL (seed 002's `image` field), safely.

Only http(s); the host's every address must be public unless the operator allows
private ones (IMAGE_FETCH_ALLOW_PRIVATE); no redirects are followed (a redirect could
point inside the network); size and time are bounded.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from django.conf import settings

from core.errors import InvalidRequest


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _check_host(host: str, port: int, param: str) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InvalidRequest(f"Could not resolve the host of the image URL in '{param}'.", param=param,
                             code="invalid_image_url") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global and not settings.IMAGE_FETCH_ALLOW_PRIVATE:
            raise InvalidRequest(f"The image URL in '{param}' points at a private or loopback address, which is "
                                 "not allowed.", param=param, code="invalid_image_url")


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
        raise InvalidRequest(f"'{param}' is larger than {max_bytes // (1024 * 1024)} MB.", param=param,
                             code="file_too_large")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'{param}' must be an http(s) URL, a data URI or base64 image data.", param=param,
                             code="invalid_image") from None


def _fetch(url: str, *, param: str, max_bytes: int) -> bytes:
    parts = urlsplit(url)
    if not parts.hostname:
        raise InvalidRequest(f"The image URL in '{param}' has no host.", param=param, code="invalid_image_url")
    _check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), param)
    request = urllib.request.Request(url, headers={"User-Agent": "image-platform/1", "Accept": "image/*"})
    try:
        with _opener.open(request, timeout=settings.IMAGE_FETCH_TIMEOUT_SECONDS) as response:
            if response.status != 200:
                raise InvalidRequest(f"Fetching the image in '{param}' gave HTTP {response.status}.", param=param,
                                     code="invalid_image_url")
            data = response.read(max_bytes + 1)
    except InvalidRequest:
        raise
    except urllib.error.HTTPError as exc:
        raise InvalidRequest(f"Fetching the image in '{param}' gave HTTP {exc.code}.", param=param,
                             code="invalid_image_url") from None
    except (urllib.error.URLError, OSError, ValueError):
        raise InvalidRequest(f"Could not fetch the image in '{param}' (unreachable or too slow).", param=param,
                             code="invalid_image_url") from None
    if len(data) > max_bytes:
        raise InvalidRequest(f"The image in '{param}' is larger than {max_bytes // (1024 * 1024)} MB.", param=param,
                             code="file_too_large")
    return data
