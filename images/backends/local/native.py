"""Models that draw at one native size: draw there, then resize to the size asked.

A model folder may hold `platform_model.json` with `{"native_size": N}` (the demo model,
tools/demo_model/train.py, draws 32x32 scenes). Such a model is always called at NxN,
whatever size the request asks; the result is then fitted to the request:

- square sizes: resized (bicubic) to the size asked;
- other sizes, text-to-image: the square is resized to the shorter side and centred, the
  bands on either side filled with the colour of the square's border (letterboxing: the
  whole figure stays in the picture, there is still one figure, none is cut);
- other sizes, edits: the input's centred square is what the model sees (resized down to
  NxN), and its result replaces that square; the bands keep the input's pixels.

Inputs of edits (image and mask) are resized down to NxN the same way. Nothing here
applies to models without the file (an operator's checkpoint draws at the size asked).
The size is read once at load (`attach`) and kept on the VAE module, which every pipeline
derived from the loaded one (img2img, inpainting, lane clones) shares.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from PIL import Image

NATIVE_FILE = "platform_model.json"
_ATTRIBUTE = "_platform_native_size"


def read_native_size(location: str) -> int | None:
    """The native size a model folder declares (platform_model.json), or None. A file
    that is not valid JSON, or a size that is not a positive multiple of 8, is ignored."""
    try:
        with open(os.path.join(location, NATIVE_FILE), encoding="utf-8") as handle:
            size = json.load(handle).get("native_size")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0 and size % 8 == 0:
        return size
    return None


def attach(pipe: Any, location: str) -> None:
    """Remember the folder's native size on the pipeline's VAE (shared by derived pipelines)."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not os.path.isdir(location):
        return
    size = read_native_size(location)
    if size is not None:
        setattr(vae, _ATTRIBUTE, size)


def native_size(pipe: Any) -> int | None:
    """The native size of a loaded (or derived) pipeline; None: draws at the size asked."""
    return getattr(getattr(pipe, "vae", None), _ATTRIBUTE, None)


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) of a width x height picture."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def to_native(image: Image.Image, size: int) -> Image.Image:
    """An edit's input (image or mask) as the model sees it: its centred square, size x size."""
    square = image.crop(centre_box(*image.size))
    resample = Image.Resampling.BICUBIC if image.mode == "RGB" else Image.Resampling.BILINEAR
    return square.resize((size, size), resample)


def border_colour(image: Image.Image) -> tuple[int, ...]:
    """The median colour of a square image's outermost pixels (its background)."""
    pixels = np.asarray(image.convert("RGB"))
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.median(ring, axis=0))


def fit(image: Image.Image, width: int, height: int, *, base: Image.Image | None = None) -> Image.Image:
    """A native square image fitted to width x height: resized to the shorter side and
    centred over `base` (an edit's input) or over the square's border colour."""
    side = min(width, height)
    square = image.resize((side, side), Image.Resampling.BICUBIC)
    if (width, height) == (side, side):
        return square
    canvas = base.convert("RGB").copy() if base is not None else Image.new("RGB", (width, height), border_colour(image))
    canvas.paste(square, centre_box(width, height)[:2])
    return canvas
