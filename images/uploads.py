"""Input images for edits and variations (Pillow only; no torch on the web tier).

Files are recognised by their bytes, not their declared type; limits follow
reference §3/§4 per profile. Everything here raises APIError subclasses with the
parameter named, so a bad upload is a 400 (413 for size) that charges nothing.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from PIL import Image, ImageOps

from core.errors import APIError, InvalidRequest

# A decompression bomb (a tiny file that inflates to gigapixels) is refused before decoding.
Image.MAX_IMAGE_PIXELS = 40_000_000
MAX_SIDE = 8192
MB = 1024 * 1024


class PayloadTooLarge(APIError):
    status_code = 413
    code = "file_too_large"


def sniff(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


@contextmanager
def _reading(param: str) -> Iterator[None]:
    """Pillow's failures while opening or decoding an upload, as 400s naming `param`:
    a decompression bomb (its warning made an error) or a corrupt or truncated file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(
            f"Invalid file '{param}': the image is too large once decoded.", param=param, code="invalid_image"
        ) from None
    except Exception:
        raise InvalidRequest(
            f"Invalid file '{param}': the image is corrupt or truncated.", param=param, code="invalid_image"
        ) from None


def image_header(data: bytes, *, param: str, max_bytes: int, formats: tuple[str, ...]) -> Image.Image:
    """Check an uploaded image without decoding it: byte size (413), format sniffed from
    the bytes, a readable header, at most MAX_SIDE pixels a side, not a decompression
    bomb (400). Returns the lazily opened image (its size and mode are known; its pixels
    are not read until `.load()`)."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"Invalid file '{param}': the file is {len(data) // MB} MB; the limit is {max_bytes // MB} MB.", param=param
        )
    kind = sniff(data[:16])
    if kind is None or kind not in formats:
        allowed = ", ".join(f"'image/{f}'" for f in formats)
        raise InvalidRequest(
            f"Invalid file '{param}': unsupported file type. Supported file formats are {allowed}.",
            param=param,
            code="invalid_image_format",
        )
    with _reading(param):
        image = Image.open(io.BytesIO(data))
    if image.width > MAX_SIDE or image.height > MAX_SIDE:
        raise InvalidRequest(
            f"Invalid file '{param}': images may be at most {MAX_SIDE} pixels a side.",
            param=param,
            code="invalid_image",
        )
    image.info["format"] = kind
    return image


def image_open(data: bytes, *, param: str, max_bytes: int, formats: tuple[str, ...]) -> Image.Image:
    """Check (`image_header`) and decode an uploaded image fully, so truncation shows
    now; raises 400/413 naming `param`."""
    image = image_header(data, param=param, max_bytes=max_bytes, formats=formats)
    with _reading(param):
        image.load()
    return image


def read_upload(upload: BinaryIO, *, param: str, max_bytes: int, formats: tuple[str, ...]) -> Image.Image:
    data = upload.read(max_bytes + 1)
    return image_open(data, param=param, max_bytes=max_bytes, formats=formats)


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def init_image(images: list[Image.Image], *, width: int, height: int) -> Image.Image:
    """The image the model starts from: the first input fitted (cover, centred) to the
    output size; further inputs are blended in with decreasing weight."""
    fitted = [ImageOps.fit(img.convert("RGB"), (width, height), Image.Resampling.LANCZOS) for img in images]
    result = fitted[0]
    for i, other in enumerate(fitted[1:], start=2):
        result = Image.blend(result, other, alpha=1.0 / (i + 1))
    return result


def edit_mask(mask: Image.Image, *, first: Image.Image, width: int, height: int) -> Image.Image:
    """OpenAI's mask (transparent = edit here) as diffusers' (white = repaint), fitted like the init."""
    if mask.info.get("format") != "png":
        raise InvalidRequest("Invalid file 'mask': the mask must be a PNG.", param="mask", code="invalid_image_format")
    if mask.size != first.size:
        raise InvalidRequest(
            f"Invalid file 'mask': the mask is {mask.width}x{mask.height} but the image is "
            f"{first.width}x{first.height}; they must match.",
            param="mask",
            code="invalid_mask",
        )
    if not has_alpha(mask):
        raise InvalidRequest(
            "Invalid file 'mask': the mask needs an alpha channel; transparent pixels mark where to edit.",
            param="mask",
            code="invalid_mask",
        )
    alpha = mask.convert("RGBA").getchannel("A")
    repaint = alpha.point(lambda a: 255 if a == 0 else 0)
    return ImageOps.fit(repaint, (width, height), Image.Resampling.NEAREST)


def nearest_gpt_size(image: Image.Image) -> str:
    """size=auto for edits: the GPT-image size closest to the input's aspect ratio."""
    ratio = image.width / image.height
    if ratio > 1.25:
        return "1536x1024"
    if ratio < 0.8:
        return "1024x1536"
    return "1024x1024"
