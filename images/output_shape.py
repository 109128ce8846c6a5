"""What the worker does to a generated image before storing it, when the request asked
for an output that is not simply the pipeline's size (Pillow only, no torch).

A vendor shape whose answer has its own geometry (Stability's edits keep the input's
size; outpaint grows the canvas by exactly the margins asked, images/stability.py)
sends its inputs letterboxed into a size the model allows, and records in
`GenerationRequest.output` (stored as `Job.params["extra"]["output"]`):

- `keep_unmasked` (bool): pixels outside the mask are the init image's, as the caller
  sent them (inpainting keeps what it was not asked to change);
- `box` ([left, top, right, bottom], pixels of the job's size): the part of the image
  that is the caller's canvas (the rest is the letterbox's padding);
- `size` ([width, height]): the size the stored image must have, the caller's canvas.

Applied in that order. Anything malformed raises ValueError (the worker fails the job,
releasing its hold): the spec comes from our own mapper, never from the caller.
"""

from __future__ import annotations

from typing import Any

from PIL import Image


def output_apply(image: Image.Image, spec: dict[str, Any], *, init: Image.Image | None, mask: Image.Image | None):
    """The image as the request's output spec wants it (see the module docstring)."""
    if spec.get("keep_unmasked") and init is not None and mask is not None:
        base = init.convert(image.mode).resize(image.size, Image.Resampling.LANCZOS)
        repaint = mask.convert("L").resize(image.size, Image.Resampling.NEAREST)
        image = Image.composite(image, base, repaint)  # white = generated, black = kept
    box = spec.get("box")
    if box is not None:
        left, top, right, bottom = (int(v) for v in box)
        if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
            raise ValueError(f"output box {box} is outside the {image.width}x{image.height} image")
        image = image.crop((left, top, right, bottom))
    size = spec.get("size")
    if size is not None:
        width, height = (int(v) for v in size)
        if width < 1 or height < 1:
            raise ValueError(f"output size {size} is empty")
        if (width, height) != image.size:
            image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image
