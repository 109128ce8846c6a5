"""The mask of a text-prompted edit, made on the worker (Stability's search-and-replace
and search-and-recolor, images/stability.py; issue 26 item 2): the job's init image
through the operator's segmenter tool model (CLIPSeg, images/backends/local/tools.py)
for the text, thresholded and grown, then the job's inpainting runs with it like any
masked edit. One job, one charge: the segmenter's run is part of the edit.

`Job.params["extra"]["mask_from"]` (written by images.services.generation from
`GenerationRequest.mask_from`): `{"segmenter": public id, "text": what to find,
"grow": pixels of the job's size}`.

The mask (L, the init image's size, 255 = regenerate) is the segmenter's map at or
above MASK_THRESHOLD (CLIPSeg's sigmoid; 0.4 as in CLIPSeg's own examples); when no
pixel reaches it, the pixels at or above half the map's highest value (what looks most
like the text). A map that is zero everywhere fails the job (`nothing_found`; its
hold is released). Worker-only, torch-free (the model runs behind `Backend.run_tool`).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from PIL import Image, ImageFilter

from images.backends.base import PipelineError, ToolTask
from images.models import ImageModel, Job
from images.services.jobs import job_fail

logger = logging.getLogger(__name__)

MASK_THRESHOLD = 102  # of 255: a segmenter probability of 0.4


def mask_threshold(segmentation: Image.Image, *, grow: int = 0) -> Image.Image | None:
    """A segmenter's map (L, 0-255) as a yes/no mask (module docstring's rule), widened
    by `grow` pixels each way; None when the map is zero everywhere."""
    segmentation = segmentation.convert("L")
    highest = segmentation.getextrema()[1]
    if highest == 0:
        return None
    cut = MASK_THRESHOLD if highest >= MASK_THRESHOLD else max(1, (highest + 1) // 2)
    mask = segmentation.point(lambda v: 255 if v >= cut else 0)
    if grow > 0:
        # A box blur spreads each white pixel exactly `grow` pixels: anything it touched is grown.
        mask = mask.filter(ImageFilter.BoxBlur(grow)).point(lambda v: 255 if v > 0 else 0)
    return mask


def search_mask_make(job: Job, backend: Any, init_image: Image.Image, spec: dict[str, Any]) -> Image.Image | None:
    """The mask for `job` (module docstring), or None after failing the job (segmenter
    missing, not a segmenter, its run failed, or nothing found: the hold is released)."""
    from images.services.models import pipeline_source

    segmenter = ImageModel.objects.filter(public_id=spec.get("segmenter") or "").first()
    if segmenter is None or segmenter.kind != ImageModel.Kind.SEGMENTER:
        job_fail(
            job_id=job.pk,
            code="generation_failed",
            message=f"The segmenter model '{spec.get('segmenter')}' is not available.",
        )
        return None
    task = ToolTask(source=pipeline_source(segmenter), kind=Job.Kind.SEGMENT, image=init_image, text=spec["text"])
    try:
        result = backend.run_tool(task, max_batch=segmenter.max_batch or None, window_ms=settings.BATCH_WINDOW_MS)
    except PipelineError as exc:
        logger.warning("job %s: its segmenter failed: %s", job.pk, exc)
        job_fail(job_id=job.pk, code="generation_failed", message=f"The segmenter failed: {exc}")
        return None
    mask = mask_threshold(result.image, grow=int(spec.get("grow") or 0))
    if mask is None:
        job_fail(
            job_id=job.pk,
            code="nothing_found",
            message=f"Nothing in the image matched '{spec['text']}', so nothing was replaced.",
        )
        return None
    return mask.resize(init_image.size, Image.Resampling.NEAREST) if mask.size != init_image.size else mask
