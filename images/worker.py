"""The worker side of a job: run the pipeline, encode and store, then settle.

Imported only by worker processes (and the embedded worker): it imports
images.pipelines, so torch. The web tier never imports this module.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from images import notify, pipelines
from images.batcher import batcher
from images.files import CONTENT_TYPES, image_delete_files, image_encode, image_save
from images.models import ImageModel, Job
from images.services.jobs import job_complete, job_fail, job_progress, job_start

logger = logging.getLogger(__name__)

# Encoding and storing run here, off the thread that drives the pipeline.
_encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
# Progress writes and token counts: database and tokenizer work that must not hold up
# a pipeline lane (on_step runs on the lane) nor wait for it.
_side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="side")
# Progress is written to the database at most this often per job (seconds).
PROGRESS_INTERVAL = 0.5


def pipeline_source(model: ImageModel) -> pipelines.PipelineSource:
    """The model row's source as a path under MODEL_DIR, an absolute path, or a hub id."""
    source = model.source
    candidate = Path(source) if Path(source).is_absolute() else Path(settings.MODEL_DIR) / source
    if candidate.exists():
        source = str(candidate)
    return pipelines.PipelineSource(source=source, dtype=model.dtype,
                                    local_files_only=not settings.MODEL_ALLOW_DOWNLOADS)


def _encode_and_store(job: Job, index: int, image: Any) -> dict[str, Any]:
    fmt = job.params.get("output_format", "png")
    data = image_encode(image, output_format=fmt, compression=int(job.params.get("output_compression", 100)))
    name = image_save(job_id=str(job.pk), index=index, data=data, output_format=fmt)
    return {"index": index, "file": name, "content_type": CONTENT_TYPES[fmt], "width": image.width,
            "height": image.height, "bytes": len(data)}


def _inputs(extra: dict[str, Any]) -> tuple[Any, Any]:
    """The init image and mask an edit or variation stored for the worker."""
    from django.core.files.storage import default_storage
    from PIL import Image

    def load(name: str | None, mode: str):
        if not name:
            return None
        with default_storage.open(name, "rb") as handle:
            image = Image.open(handle)
            image.load()
        return image.convert(mode)

    return load(extra.get("init_file"), "RGB"), load(extra.get("mask_file"), "L")


def _progress_write(job_id: Any, steps_done: int) -> None:
    try:
        job_progress(job_id=job_id, steps_done=steps_done)
    except Exception:  # progress is informative; the job goes on
        logger.warning("could not record progress of job %s", job_id, exc_info=True)
    finally:
        close_old_connections()


def _publish_preview(job: Job, index: int, image: Any) -> None:
    """Encode a partial preview at the job's size and hand it to the waiting stream."""
    import base64

    from PIL import Image

    fmt = job.params.get("output_format", "png")
    preview = image.resize((job.width, job.height), Image.Resampling.BILINEAR)
    data = image_encode(preview, output_format=fmt, compression=min(80, int(job.params.get("output_compression", 100))))
    notify.job_event_publish(job.pk, {"type": "partial", "index": index, "b64": base64.b64encode(data).decode("ascii")})


def job_run(*, job_id: str) -> None:
    """Run one job to a terminal state. Safe to call twice for the same job."""
    job = job_start(job_id=job_id)
    if job is None:
        logger.info("job %s already settled; duplicate delivery ignored", job_id)
        return
    if job.status == Job.Status.RUNNING and job.deadline and job.deadline < job.started_at:
        job_fail(job_id=job.pk, code="deadline_exceeded", message="The job waited past its deadline.")
        return

    last_write = [0.0]

    def on_step(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last_write[0] >= PROGRESS_INTERVAL:
            last_write[0] = now
            # img2img runs fewer steps than asked; progress is reported on the job's scale.
            _side.submit(_progress_write, job.pk, round(done * job.steps / max(1, total)))

    source = pipeline_source(job.model)
    extra = job.params.get("extra") or {}
    try:
        init_image, mask_image = _inputs(extra)
    except Exception:
        logger.exception("job %s: reading its input images failed", job.pk)
        job_fail(job_id=job.pk, code="input_missing", message="The job's input images could not be read.")
        return
    strength = float(extra.get("strength") or 0.75)
    partials = int(job.params.get("partial_images") or 0) if job.params.get("stream") else 0
    task = pipelines.GenerationTask(
        source=source, prompt=job.prompt, negative_prompt=job.params.get("negative_prompt") or None,
        width=job.width, height=job.height, steps=job.steps, guidance=job.guidance,
        seeds=[job.seed + i for i in range(job.n)], on_step=on_step, init_image=init_image,
        mask_image=mask_image, strength=strength)
    if partials:  # streaming: previews at steps spread over the steps actually run
        task.preview_steps = pipelines.preview_steps_for(pipelines.effective_steps(task), partials)
        task.on_preview = lambda index, images: _encoder.submit(_publish_preview, job, index, images[0])
    tokens = _side.submit(pipelines.count_tokens, source, job.prompt)  # while the pipeline runs
    try:
        result = batcher.run(task, max_batch=job.model.max_batch or None, window_ms=settings.BATCH_WINDOW_MS)
        prompt_tokens = tokens.result()
    except pipelines.PipelineError as exc:
        logger.warning("job %s failed: %s", job.pk, exc)
        job_fail(job_id=job.pk, code="generation_failed", message=f"Image generation failed: {exc}")
        return
    except Exception as exc:  # a bug or an unexpected library error: fail now, never hang the caller
        logger.exception("job %s failed unexpectedly", job.pk)
        job_fail(job_id=job.pk, code="generation_failed",
                 message=f"Image generation failed ({exc.__class__.__name__}).")
        return

    futures = [_encoder.submit(_encode_and_store, job, i, image) for i, image in enumerate(result.images)]
    try:
        stored = [future.result() for future in futures]
    except Exception as exc:
        logger.exception("job %s: storing images failed", job.pk)
        image_delete_files([f.result()["file"] for f in futures if f.done() and not f.exception()])
        job_fail(job_id=job.pk, code="storage_failed", message=f"Storing the images failed: {exc.__class__.__name__}")
        return
    if not job_complete(job=job, stored=stored, gpu_ms=int(result.seconds * 1000), prompt_tokens=prompt_tokens):
        image_delete_files([row["file"] for row in stored])
