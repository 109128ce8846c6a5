"""Input images of edits and variations, in the order the generation service needs:

1. `inputs_peek`: cheap. Reads each uploaded file's bytes (bounded), recognises the
   format from the bytes, and reads the pixel size from the header without decoding.
   Counts, formats, file sizes, squareness, the per-request pixel budget and every
   mask rule are refused here, before anything is decoded, fetched or written.
2. `inputs_fetch`: URL references (seed 002's `image`, JSON edits' `image_url`),
   through the safe fetcher; only after the request is known to be payable.
3. `inputs_prepare`: decodes and builds the init image and mask in memory.
4. `inputs_store`: writes them, only once the job and its hold are committed;
   `inputs_delete` removes what a failed request wrote.

Everything raises APIError subclasses naming the parameter (400, 413 for size), so a
bad input is refused before anything is charged or stored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from core.errors import InvalidRequest
from images import uploads
from images.profiles import Inputs


@dataclass
class InputImage:
    """One input image as the caller sent it: an uploaded file or a reference string
    (http(s) URL, data URL or bare base64). `data`, `format`, `width`, `height` and
    `alpha` are filled by peeking; `image` by `inputs_prepare`."""

    param: str  # "image" or "mask"
    upload: Any = None
    reference: str | None = None
    data: bytes | None = None
    format: str | None = None
    width: int = 0
    height: int = 0
    alpha: bool = False
    image: Image.Image | None = field(default=None, repr=False)

    @property
    def is_url(self) -> bool:
        return self.reference is not None and self.reference.strip().startswith(("http://", "https://"))

    @property
    def peeked(self) -> bool:
        return self.data is not None


def _peek_bytes(item: InputImage, data: bytes, *, max_bytes: int, formats: tuple[str, ...]) -> None:
    """Format and size from the bytes and the header; nothing is decoded."""
    header = uploads.image_header(data, param=item.param, max_bytes=max_bytes, formats=formats)
    item.data, item.format = data, header.info["format"]
    item.width, item.height, item.alpha = header.width, header.height, uploads.has_alpha(header)


def _peek(item: InputImage, *, rules: Inputs) -> None:
    formats = ("png",) if item.param == "mask" else rules.formats
    max_bytes = 4 * uploads.MB if item.param == "mask" else rules.max_bytes
    if item.upload is not None:
        _peek_bytes(item, item.upload.read(max_bytes + 1), max_bytes=max_bytes, formats=formats)
    elif not item.is_url:
        from images.fetch import image_bytes_from_reference

        data = image_bytes_from_reference(item.reference or "", param=item.param, max_bytes=max_bytes)
        _peek_bytes(item, data, max_bytes=max_bytes, formats=formats)


def _check_peeked(images: list[InputImage], mask: InputImage | None, *, rules: Inputs) -> None:
    """The rules that need only sizes: squareness, the pixel budget, the mask's size."""
    for item in images:
        if item.peeked and rules.square and item.width != item.height:
            raise InvalidRequest(
                f"Invalid file '{item.param}': this model needs a square image ({item.width}x{item.height} was sent).",
                param=item.param,
                code="invalid_image",
            )
    budget = settings.INPUT_PIXEL_BUDGET
    pixels = sum(item.width * item.height for item in [*images, *([mask] if mask else [])] if item.peeked)
    if budget and pixels > budget:
        raise InvalidRequest(
            f"The input images have {pixels} pixels in all; one request may send at most {budget} "
            "(INPUT_PIXEL_BUDGET). Send fewer or smaller images.",
            param="image",
            code="input_too_large",
        )
    first = images[0]
    if mask is not None and mask.peeked and first.peeked:
        if (mask.width, mask.height) != (first.width, first.height):
            raise InvalidRequest(
                f"Invalid file 'mask': the mask is {mask.width}x{mask.height} but the image is "
                f"{first.width}x{first.height}; they must match.",
                param="mask",
                code="invalid_mask",
            )
        if not mask.alpha:
            raise InvalidRequest(
                "Invalid file 'mask': the mask needs an alpha channel; transparent pixels mark where to edit.",
                param="mask",
                code="invalid_mask",
            )


def inputs_peek(images: list[InputImage], mask: InputImage | None, *, rules: Inputs) -> None:
    """Cheap checks of every input that needs no URL fetch and no decode. Raises
    400 (count, format, corrupt header, square, pixel budget, mask) or 413 (file size)."""
    if not images:
        raise InvalidRequest("Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    if len(images) > rules.max_images:
        if rules.max_images == 1:
            raise InvalidRequest("This model takes exactly one image.", param="image", code="invalid_value")
        raise InvalidRequest(
            f"At most {rules.max_images} images may be edited together; {len(images)} were sent.",
            param="image",
            code="too_many_images",
        )
    if mask is not None and not rules.mask:
        raise InvalidRequest("Unknown parameter: 'mask'.", param="mask", code="unknown_parameter")
    for item in [*images, *([mask] if mask else [])]:
        _peek(item, rules=rules)
    _check_peeked(images, mask, rules=rules)


def inputs_fetch(images: list[InputImage], mask: InputImage | None, *, rules: Inputs) -> None:
    """Fetch URL references (safe fetcher: public addresses only, one deadline) and
    apply the same checks to them."""
    from images.fetch import image_bytes_from_reference

    pending = [item for item in [*images, *([mask] if mask else [])] if not item.peeked]
    for item in pending:
        formats = ("png",) if item.param == "mask" else rules.formats
        max_bytes = 4 * uploads.MB if item.param == "mask" else rules.max_bytes
        data = image_bytes_from_reference(item.reference or "", param=item.param, max_bytes=max_bytes)
        _peek_bytes(item, data, max_bytes=max_bytes, formats=formats)
    if pending:
        _check_peeked(images, mask, rules=rules)


def _decode(item: InputImage) -> Image.Image:
    image = uploads.image_open(
        item.data or b"", param=item.param, max_bytes=len(item.data or b""), formats=(item.format or "png",)
    )
    item.image = image
    return image


@dataclass
class PreparedInputs:
    """What the worker needs: the init image at the output size and, for inpainting, a
    mask in diffusers' convention (white = repaint)."""

    init: Image.Image
    mask: Image.Image | None


def inputs_prepare(
    images: list[InputImage], mask: InputImage | None, *, rules: Inputs, width: int, height: int
) -> PreparedInputs:
    """Decode every input (all peeked and checked) and build the init image and mask.
    No mask and `rules.transparency_mask` (dall-e-2): the first image's fully
    transparent pixels are the mask, as OpenAI does; an image without any is edited whole."""
    decoded = [_decode(item) for item in images]
    init = uploads.init_image(decoded, width=width, height=height)
    mask_image = None
    if mask is not None:
        mask_image = uploads.edit_mask(_decode(mask), first=decoded[0], width=width, height=height)
    elif rules.transparency_mask and uploads.has_alpha(decoded[0]):
        alpha = decoded[0].convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] == 0:  # at least one fully transparent pixel
            mask_image = uploads.edit_mask(decoded[0], first=decoded[0], width=width, height=height)
    return PreparedInputs(init=init, mask=mask_image)


def input_names(job_id: Any) -> tuple[str, str]:
    """Storage names of a job's init image and mask (known before they are written)."""
    return f"inputs/{job_id}/init.png", f"inputs/{job_id}/mask.png"


def _save(image: Image.Image, name: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    saved = default_storage.save(name, ContentFile(buffer.getvalue()))
    if saved != name:  # the job id is fresh, so the name cannot be taken; refuse to guess otherwise
        default_storage.delete(saved)
        raise OSError(f"storage renamed {name} to {saved}")
    return saved


def inputs_store(prepared: PreparedInputs, *, job_id: Any) -> list[str]:
    """Write the init image (and mask) under the job's names; returns the names
    written. On failure, removes what it wrote and raises."""
    init_name, mask_name = input_names(job_id)
    written: list[str] = []
    try:
        written.append(_save(prepared.init, init_name))
        if prepared.mask is not None:
            written.append(_save(prepared.mask, mask_name))
    except Exception:
        inputs_delete(written)
        raise
    return written


def inputs_delete(names: list[str]) -> None:
    """Remove stored inputs (never raises)."""
    from images.files import image_delete_files

    image_delete_files(names)
