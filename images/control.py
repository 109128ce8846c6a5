"""ControlNet and IP-Adapter jobs on the worker (Stability's control/sketch, control/structure
and control/style, images/stability.py): a text-to-image job of a generator whose stored
input image is not an init image but the control image (sketch, structure) or the style
reference (style). One job, one charge: the preprocessor's and the adapter's runs are
part of the generation, like search-and-replace's segmenter (images/search_mask.py).

`Job.params["extra"]` (written by images.services.generation from
`GenerationRequest.control` / `.style`):

- `control`: `{"controlnet": public id, "preprocessor": "canny" | "depth",
  "depth_estimator": public id or null, "scale": float}`. The input (already the job's
  size) becomes the control image: `canny` is OpenCV's Canny edge detector on its grey
  levels (thresholds CANNY_LOW / CANNY_HIGH, as ControlNet 1.1's canny annotator's
  defaults), edges white on black; `depth` is the depth estimator tool model's map
  (images/backends/local/tools.py TOOL_DEPTH: 0-255, light = near). Both as RGB.
- `style`: `{"adapter": public id, "scale": float}`: the input is the IP-Adapter's
  reference image, as sent.

A missing tool model, one of another kind, or a failed preprocessor fails the job with a
message saying which (its hold released). Worker-only and torch-free (models run
behind `Backend.run_tool` / `Backend.run`); OpenCV is imported when canny runs.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from PIL import Image

from images.backends.base import TOOL_DEPTH, ControlSpec, IPAdapterSpec, PipelineError, ToolTask
from images.models import ImageModel, Job
from images.services.jobs import job_fail

logger = logging.getLogger(__name__)

CANNY_LOW, CANNY_HIGH = 100, 200  # cv2.Canny's hysteresis thresholds
PREPROCESSORS = ("canny", "depth")


def canny_edges(image: Image.Image) -> Image.Image:
    """The image's Canny edges (cv2.Canny on its grey levels, CANNY_LOW/CANNY_HIGH) as
    an RGB image of its size: edges white (255), the rest black."""
    import cv2
    import numpy as np

    grey = np.asarray(image.convert("L"))
    edges = cv2.Canny(grey, CANNY_LOW, CANNY_HIGH)
    return Image.fromarray(edges).convert("RGB")


def _tool(job: Job, public_id: str | None, kind: str, label: str) -> ImageModel | None:
    """The enabled tool model `public_id` of `kind`, else None after failing the job."""
    model = ImageModel.objects.filter(public_id=public_id or "", enabled=True).first()
    if model is None or model.kind != kind:
        job_fail(job_id=job.pk, code="generation_failed", message=f"The {label} model '{public_id}' is not available.")
        return None
    return model


def control_prepare(
    job: Job, backend: Any, image: Image.Image, extra: dict[str, Any]
) -> tuple[ControlSpec | None, IPAdapterSpec | None] | None:
    """The ControlSpec and / or IPAdapterSpec of a job with `extra["control"]` or
    `extra["style"]` (module docstring), from its input `image` (RGB, the job's size);
    None after failing the job."""
    from images.services.models import pipeline_source

    control = ip_adapter = None
    spec = extra.get("control")
    if spec:
        controlnet = _tool(job, spec.get("controlnet"), ImageModel.Kind.CONTROLNET, "ControlNet")
        if controlnet is None:
            return None
        preprocessor = spec.get("preprocessor")
        if preprocessor not in PREPROCESSORS:
            job_fail(job_id=job.pk, code="generation_failed", message=f"Unknown preprocessor '{preprocessor}'.")
            return None
        if preprocessor == "canny":
            try:
                control_image = canny_edges(image)
            except Exception as exc:  # (OpenCV missing or failing: the job fails, never hangs)
                logger.warning("job %s: canny failed: %s", job.pk, exc)
                job_fail(job_id=job.pk, code="generation_failed", message="The edge detector failed.")
                return None
        else:
            estimator = _tool(job, spec.get("depth_estimator"), ImageModel.Kind.DEPTH_ESTIMATOR, "depth estimator")
            if estimator is None:
                return None
            task = ToolTask(source=pipeline_source(estimator), kind=TOOL_DEPTH, image=image)
            try:
                result = backend.run_tool(
                    task, max_batch=estimator.max_batch or None, window_ms=settings.BATCH_WINDOW_MS
                )
            except PipelineError as exc:
                logger.warning("job %s: its depth estimator failed: %s", job.pk, exc)
                job_fail(job_id=job.pk, code="generation_failed", message=f"The depth estimator failed: {exc}")
                return None
            control_image = result.image.convert("RGB")
            if control_image.size != image.size:
                control_image = control_image.resize(image.size, Image.Resampling.BILINEAR)
        control = ControlSpec(source=pipeline_source(controlnet), image=control_image, scale=float(spec["scale"]))
    style = extra.get("style")
    if style:
        adapter = _tool(job, style.get("adapter"), ImageModel.Kind.IP_ADAPTER, "IP-Adapter")
        if adapter is None:
            return None
        ip_adapter = IPAdapterSpec(source=pipeline_source(adapter), image=image, scale=float(style["scale"]))
    return control, ip_adapter
