"""The worker side of a tool job (issue 26 item 1; images/tool_models.py): its input
image through the tool model on the backend (`Backend.run_tool`, batched across
requests), then stored and settled exactly like a generation (images/worker.py: the
same stop rule, failure codes, output check, watermark and signing, job_complete).

What each kind delivers, as the job's one image:
- upscale: the upscaled RGB image (the model's scale times the input);
- remove_bg: the input as RGBA, its alpha the model's foreground matte;
- segment: the mask (L, the input's size; 255 = what the prompt names), unmarked: a
  mask is data for a later edit, not a picture;
- describe: the input itself, unchanged and unmarked (the proxy's task shows it), and
  the caption in `Job.output_text`.
Imported only by worker processes, by images.actors beside images.worker: importing it
registers `tool_job_run` in images.worker.TOOL_RUNNERS (images.worker.job_run calls it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.conf import settings
from dramatiq.middleware import TimeLimitExceeded

from images.backends import get_backend
from images.backends.base import PipelineError, ToolTask
from images.files import CONTENT_TYPES, image_delete_files, image_encode, image_save
from images.models import Job
from images.services.jobs import job_complete, job_fail
from images.services.models import pipeline_source
from images.task_status import task_status_progress
from images.tool_models import TOOL_JOB_KINDS
from images.worker import (
    STOP_SETTLED,
    STOP_TIME_LIMIT,
    TOOL_RUNNERS,
    _encode_and_store,
    _fail_stopped,
    _inputs,
    _output_moderate,
    _settled_watch,
    _stop_rule,
)

logger = logging.getLogger(__name__)


def _store_unmarked(job: Job, image: Any, *, fmt: str) -> dict[str, Any]:
    """Encode and store an image without the watermark or a manifest (a mask, or the
    caller's own input returned by describe); its GeneratedImage fields."""
    data = image_encode(image, output_format=fmt, compression=int(job.params.get("output_compression", 100)))
    name = image_save(job_id=str(job.pk), index=0, data=data, output_format=fmt)
    return {
        "index": 0,
        "file": name,
        "content_type": CONTENT_TYPES[fmt],
        "width": image.width,
        "height": image.height,
        "bytes": len(data),
        "seed": job.seed,
        "moderation": {},
    }


def tool_job_run(job: Job, extra: dict[str, Any]) -> None:
    """Run a claimed tool job to a terminal state (images.worker.job_run's rules: the
    job at fault fails it and releases its hold; nothing here is retried)."""
    try:
        init_image, _ = _inputs(extra)
        if init_image is None:
            raise ValueError("the job has no input image")
    except Exception:
        logger.exception("job %s: reading its input image failed", job.pk)
        job_fail(job_id=job.pk, code="input_missing", message="The job's input image could not be read.")
        return
    backend = get_backend()
    settled, expired = _settled_watch.watch(job.pk), threading.Event()
    # A prompted upscale (Stability's upscale/creative and conservative: extra["upscale"],
    # images/tool_models.py) carries its diffusion settings; the others carry none.
    upscale = extra.get("upscale") if job.kind == Job.Kind.UPSCALE else None
    task = ToolTask(
        source=pipeline_source(job.model),
        kind=job.kind,
        image=init_image,
        text=job.prompt,
        should_stop=_stop_rule(job, settled, expired),
        negative_text=job.params.get("negative_prompt") or "",
        seed=job.seed,
        params={"num_inference_steps": job.steps, "guidance_scale": job.guidance, **upscale} if upscale else {},
    )
    try:
        result = backend.run_tool(task, max_batch=job.model.max_batch or None, window_ms=settings.BATCH_WINDOW_MS)
    except PipelineError as exc:
        logger.warning("job %s failed: %s", job.pk, exc)
        job_fail(job_id=job.pk, code="generation_failed", message=f"The {job.model.kind} model failed: {exc}")
        return
    except TimeLimitExceeded:
        expired.set()
        _fail_stopped(job, STOP_TIME_LIMIT)
        return
    except Exception as exc:
        logger.exception("job %s failed unexpectedly", job.pk)
        job_fail(job_id=job.pk, code="generation_failed", message=f"The tool model failed ({exc.__class__.__name__}).")
        return
    finally:
        _settled_watch.unwatch(job.pk)
    if result.stopped or settled.is_set():
        _fail_stopped(job, result.stopped or STOP_SETTLED)
        return

    fmt = job.params.get("output_format", "png")
    output_moderation: dict[str, Any] = {}
    try:
        if job.kind == Job.Kind.DESCRIBE:
            stored = [_store_unmarked(job, init_image, fmt="png")]
        elif job.kind == Job.Kind.SEGMENT:
            stored = [_store_unmarked(job, result.image, fmt=fmt)]
        else:
            checked = _output_moderate(job, backend, [result.image])
            if checked is None:  # settled: withheld, or the check failed
                return
            images, marks, output_moderation = checked
            stored = [_encode_and_store(job, 0, images[0], job.seed, marks[0])]
    except Exception as exc:
        logger.exception("job %s: storing its result failed", job.pk)
        job_fail(job_id=job.pk, code="storage_failed", message=f"Storing the result failed: {exc.__class__.__name__}")
        return
    if result.text:  # (before the settle: a poll that sees SUCCEEDED sees the text)
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(output_text=result.text)
        job.output_text = result.text
    task_status_progress(job_id=job.pk, steps_done=job.steps)
    if not job_complete(
        job=job,
        stored=stored,
        gpu_ms=int(result.seconds * 1000),
        prompt_tokens=None,
        output_moderation=output_moderation,
    ):
        image_delete_files([row["file"] for row in stored])


TOOL_RUNNERS.update(dict.fromkeys(TOOL_JOB_KINDS, tool_job_run))
