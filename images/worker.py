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

from images import pipelines
from images.files import CONTENT_TYPES, image_delete_files, image_encode, image_save
from images.models import ImageModel, Job
from images.services import job_complete, job_fail, job_progress, job_start

logger = logging.getLogger(__name__)

# Encoding and storing run here, off the thread that drives the pipeline.
_encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
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
            job_progress(job_id=job.pk, steps_done=done)

    source = pipeline_source(job.model)
    task = pipelines.GenerationTask(
        source=source, prompt=job.prompt, negative_prompt=job.params.get("negative_prompt") or None,
        width=job.width, height=job.height, steps=job.steps, guidance=job.guidance,
        seeds=[job.seed + i for i in range(job.n)], on_step=on_step)
    try:
        result = pipelines.run_batch([task])[0]
        prompt_tokens = pipelines.count_tokens(source, job.prompt)
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
