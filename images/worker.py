"""The worker side of a job: run it on the backend, encode and store, then settle.

Imported only by worker processes (and the embedded worker): the backend it runs on
(images.backends.local) imports torch. The web tier never imports this module.

Which errors end a job, and which are retried (the rule; images/actors.py hands the
rest to Dramatiq, docs/operations.md lists it for operators):
- Anything about the job itself fails it here and releases its hold in full, never
  retried (a retry would fail the same way, or run into the same limit): the pipeline
  raising (PipelineError or any other exception out of the backend), input images that
  cannot be read, images that cannot be stored, the time limit or the deadline reached.
- A job settled by someone else while it runs (cancelled by its client, failed by the
  deadline sweep) stops its pipeline at the next step and is left as they settled it.
- Errors outside the pipeline call (the database lost while claiming or settling the
  job) propagate to Dramatiq, which retries transient ones (images.actors).

Time. The pipeline gets PIPELINE_TIME_SHARE of the message's time limit
(JOB_TIME_LIMIT_MS), counted from when the job is claimed, and never runs past the
job's deadline: `should_stop` stops it cooperatively at the next step (see
images.backends.local.runner for how that works with batching). Dramatiq's own limit is
only a backstop; if it fires while the pipeline runs, the job is failed and released too.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from dramatiq.middleware import TimeLimitExceeded

from accounts.models import Tenant
from core.errors import InvalidRequest
from images import notify
from images.backends import get_backend
from images.backends.base import (
    GenerationTask,
    LoraSpec,
    PipelineError,
    PipelineSource,
    effective_steps,
    preview_steps_for,
)
from images.control import control_prepare
from images.errors import OUTPUT_MODERATION_BLOCKED, UNSUPPORTED_BY_FAMILY
from images.files import CONTENT_TYPES, image_delete_files, image_encode, image_save
from images.lora_files import LoraFetchError, lora_local_path
from images.models import ImageModel, Job
from images.output_shape import output_apply
from images.profiles import capabilities_check
from images.search_mask import search_mask_make
from images.selectors import image_model_cache_clear
from images.services.jobs import job_complete, job_deadline_reached, job_fail, job_progress, job_start
from images.services.models import pipeline_source
from images.services.output_moderation import (
    blocked_output_record,
    image_blur,
    job_output_summary,
    output_action,
    output_level,
    output_mark,
    output_verdicts,
)
from images.task_status import task_status_progress, task_status_shared
from images.tool_models import TOOL_JOB_KINDS
from images.validation import image_seed

logger = logging.getLogger(__name__)

# A job's images are encoded and stored here side by side, off the thread that drives
# the pipeline (a job with one image does it on its own thread: no hand-off, issue 20).
_encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
# Progress writes and token counts: database and tokenizer work that must not hold up
# a pipeline lane (on_step runs on the lane) nor wait for it.
_side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="side")
# Progress is written to the database at most this often per job (seconds), where it
# is written there at all: only when web processes cannot see the job's status snapshot
# (images.task_status.task_status_shared); else every step goes to the snapshot.
PROGRESS_INTERVAL = 0.5
# How often the status snapshots of the jobs running in this process are looked at to
# notice a cancellation (seconds; no database), and how often their rows are read back
# as a backstop (one query for all of them, none while none runs).
SETTLED_POLL_INTERVAL = 0.25
SETTLED_DB_INTERVAL = 5.0
# The share of JOB_TIME_LIMIT_MS the pipeline may use. The rest is left for encoding,
# storing and settling, so that our own stop comes before Dramatiq's (an asynchronous
# exception that could land anywhere, even in the middle of settling).
PIPELINE_TIME_SHARE = 0.9

# The runners of the tool job kinds (issue 26 item 1), by Job.kind: registered by
# images.tool_worker, which builds on this module's parts and which images.actors imports
# beside it (so this module imports nothing back: tests/test_import_rules.py, no cycles).
TOOL_RUNNERS: dict[str, Callable[[Job, dict[str, Any]], None]] = {}

# should_stop's reasons (GenerationResult.stopped)
STOP_SETTLED = "settled"  # the job is no longer running: cancelled, or failed by the sweep
STOP_TIME_LIMIT = "time_limit"
STOP_DEADLINE = "deadline"


class _SettledWatch:
    """Which of this process's running jobs were settled by someone else (a client's
    cancel, the deadline sweep): one thread looks every SETTLED_POLL_INTERVAL at their
    status snapshots (images.task_status: whoever settles a job writes its tombstone
    there) and, as a backstop for a tombstone that could not be written, reads their
    rows every SETTLED_DB_INTERVAL. So a job shorter than that costs no query and no
    connection (the watch used to open one per job and query every 0.25 s); the thread
    lives as long as the process and waits without a query while no job runs."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._events: dict[str, threading.Event] = {}
        self._thread: threading.Thread | None = None
        self._db_due = 0.0

    def watch(self, job_id: Any) -> threading.Event:
        with self._lock:
            if not self._events:
                self._db_due = time.monotonic() + self._db_interval()
            event = self._events.setdefault(str(job_id), threading.Event())
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="job-settled-watch", daemon=True)
                self._thread.start()
            self._lock.notify_all()
            return event

    def unwatch(self, job_id: Any) -> None:
        with self._lock:
            self._events.pop(str(job_id), None)

    @staticmethod
    def _db_interval() -> float:
        from images.task_status import task_status_shared

        return SETTLED_DB_INTERVAL if task_status_shared() else SETTLED_POLL_INTERVAL

    def _loop(self) -> None:
        from django.db import connection

        from images.task_status import task_status_read

        while True:
            with self._lock:
                if not self._events:
                    # Idle: close the connection if the backstop opened one (only jobs
                    # running longer than SETTLED_DB_INTERVAL make it read the rows).
                    connection.close()
                    self._lock.wait_for(lambda: self._events)
            time.sleep(SETTLED_POLL_INTERVAL)
            with self._lock:
                ids = list(self._events)
                from_db = time.monotonic() >= self._db_due
                if from_db:
                    self._db_due = time.monotonic() + self._db_interval()
            settled = {job_id for job_id in ids if task_status_read(job_id=job_id).get("final")}
            if from_db and ids:
                try:
                    rows = (
                        Job.objects.filter(pk__in=ids).exclude(status=Job.Status.RUNNING).values_list("pk", flat=True)
                    )
                    settled |= {str(pk) for pk in rows}
                except Exception:  # the database is away: the time limit and deadline still apply
                    logger.warning("could not read back running jobs' status", exc_info=True)
                    close_old_connections()
            with self._lock:
                for job_id in settled:
                    if job_id in self._events:
                        self._events[job_id].set()


_settled_watch = _SettledWatch()


def _encode_and_store(
    job: Job, index: int, image: Any, seed: int, moderation: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Mark (the invisible watermark), encode, sign (a C2PA manifest, when configured)
    and store one delivered image (issue 25: images/backends/local/provenance.py);
    returns its GeneratedImage fields, `moderation` its output-moderation mark. A
    blurred image gets no watermark: its chroma pattern would add back edge energy the
    blur removed; the manifest and the API's mark still say what it is."""
    backend = get_backend()
    fmt = job.params.get("output_format", "png")
    if (moderation or {}).get("action") != "blurred":  # (its pattern would put back the edges the blur took out)
        image = backend.watermark(image)
    data = image_encode(image, output_format=fmt, compression=int(job.params.get("output_compression", 100)))
    data = backend.sign(data, content_type=CONTENT_TYPES[fmt], model=job.model.public_id, generated_at=timezone.now())
    name = image_save(job_id=str(job.pk), index=index, data=data, output_format=fmt)
    return {
        "index": index,
        "file": name,
        "content_type": CONTENT_TYPES[fmt],
        "width": image.width,
        "height": image.height,
        "bytes": len(data),
        "seed": seed,
        "moderation": moderation or {},
    }


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


def _progress_write(job_id: Any, steps_done: int, *, database: bool) -> None:
    """Steps done, to the job's status snapshot (polls, and a cancel's charge) and, only
    where web processes cannot see the snapshot, to the row."""
    task_status_progress(job_id=job_id, steps_done=steps_done)
    if not database:
        return
    try:
        job_progress(job_id=job_id, steps_done=steps_done)
    except Exception:  # progress is informative; the job goes on
        logger.warning("could not record progress of job %s", job_id, exc_info=True)
        close_old_connections()  # (a broken connection is replaced on the next write)


def _publish_preview(job: Job, index: int, image: Any, steps_done: int) -> None:
    """Record the preview's step as done, then encode the preview at the job's size and
    hand it to the waiting stream. The order matters for money: a delivered preview
    counts as work done when the client cancels (job_cancel), so the step is recorded
    first, and a job no longer running (cancelled meanwhile) delivers nothing more."""
    import base64

    from PIL import Image

    try:
        running = job_progress(job_id=job.pk, steps_done=steps_done)
    except Exception:
        logger.warning("could not record the preview step of job %s; preview dropped", job.pk, exc_info=True)
        close_old_connections()  # (a broken connection is replaced on the next write)
        return
    if not running:
        return
    fmt = job.params.get("output_format", "png")
    preview = image.resize((job.width, job.height), Image.Resampling.BILINEAR)
    event: dict[str, Any] = {"type": "partial", "index": index}
    action = output_action(job=job)
    if action != Tenant.OutputModeration.OFF:  # (issue 25: classified before it is sent)
        try:
            verdict = output_verdicts(scores=get_backend().classify([image]), level=output_level(job=job))[0]
        except Exception:  # an unchecked preview is never sent
            logger.warning("could not classify a preview of job %s; preview dropped", job.pk, exc_info=True)
            return
        if verdict.unsafe and action == Tenant.OutputModeration.BLOCK:
            return
        if verdict.unsafe:
            preview = image_blur(preview) if action == Tenant.OutputModeration.BLUR else preview
            event["moderation"] = output_mark(action=action, categories=verdict.categories)
    data = image_encode(preview, output_format=fmt, compression=min(80, int(job.params.get("output_compression", 100))))
    notify.job_event_publish(job.pk, {**event, "b64": base64.b64encode(data).decode("ascii")})


def _stop_rule(job: Job, settled: threading.Event, expired: threading.Event) -> Callable[[], str | None]:
    """The task's should_stop: cheap (a flag and a clock), asked on the lane every step."""
    now = time.monotonic()
    limit_at = now + settings.JOB_TIME_LIMIT_MS / 1000 * PIPELINE_TIME_SHARE
    deadline_at = now + (job.deadline - timezone.now()).total_seconds() if job.deadline else math.inf

    def should_stop() -> str | None:
        if settled.is_set():
            return STOP_SETTLED
        if expired.is_set():
            return STOP_TIME_LIMIT
        now = time.monotonic()
        if now >= deadline_at:
            return STOP_DEADLINE
        if now >= limit_at:
            return STOP_TIME_LIMIT
        return None

    return should_stop


def job_run(*, job_id: str) -> None:
    """Run one job to a terminal state. Safe to call twice for the same job.

    Settles the job itself whenever the job is at fault (module docstring); raises only
    for errors outside the pipeline call (e.g. the database lost), which Dramatiq may
    retry: every transition is conditional and the charge keyed by the job.
    """
    job = job_start(job_id=job_id)
    if job is None:
        logger.info("job %s already settled; duplicate delivery ignored", job_id)
        return
    if job.status == Job.Status.RUNNING and job.deadline and job.deadline < job.started_at:
        job_deadline_reached(job_id=job.pk)  # (no step run: a Cancel-After job is free)
        return

    last_write = [0.0]
    last_step = [0, 1]  # the latest on_step (done, total), for the previews that follow it
    progress_in_db = not task_status_shared()

    def job_steps(done: int, total: int) -> int:
        # img2img runs fewer steps than asked; progress is recorded on the job's scale.
        return round(done * job.steps / max(1, total))

    def on_step(done: int, total: int) -> None:
        last_step[:] = [done, total]
        now = time.monotonic()
        if not progress_in_db or done == total or now - last_write[0] >= PROGRESS_INTERVAL:
            last_write[0] = now
            _side.submit(_progress_write, job.pk, job_steps(done, total), database=progress_in_db)

    backend = get_backend()
    source = pipeline_source(job.model)
    extra = job.params.get("extra") or {}
    if extra.get("pipeline") is False:  # (no model: the input, reshaped, is the result)
        _deliver_input(job, extra)
        return
    if job.kind in TOOL_JOB_KINDS:  # (issue 26: a tool model on the job's input image)
        runner = TOOL_RUNNERS.get(job.kind)
        if runner is None:
            job_fail(job_id=job.pk, code="generation_failed", message="This worker cannot run tool models.")
            return
        runner(job, extra)
        return
    masked = bool(extra.get("mask_file") or extra.get("mask_from"))
    refusal = _capabilities_reconcile(job, backend, source, masked=masked)
    if refusal is not None:  # a 400 for this job too (images.errors), never a retryable 502
        logger.warning("job %s refused by the model's family: %s", job.pk, refusal)
        job_fail(job_id=job.pk, code=UNSUPPORTED_BY_FAMILY, message=str(refusal))
        return
    try:
        init_image, mask_image = _inputs(extra)
    except Exception:
        logger.exception("job %s: reading its input images failed", job.pk)
        job_fail(job_id=job.pk, code="input_missing", message="The job's input images could not be read.")
        return
    if extra.get("mask_from") and mask_image is None:  # (a text-prompted edit: images/search_mask.py)
        mask_image = search_mask_make(job, backend, init_image, extra["mask_from"])
        if mask_image is None:  # (failed and settled there)
            return
    control = ip_adapter = None
    if extra.get("control") or extra.get("style"):  # (the input is a control or style image: images/control.py)
        prepared = control_prepare(job, backend, init_image, extra)
        if prepared is None:  # (failed and settled there)
            return
        control, ip_adapter = prepared
        init_image = None  # text-to-image, with the ControlNet / IP-Adapter
    try:
        loras = _loras(job.params.get("loras") or ())
    except LoraFetchError as exc:  # a tenant's upload deleted after the request, or the store away
        logger.warning("job %s: %s", job.pk, exc)
        job_fail(job_id=job.pk, code="lora_missing", message="A LoRA adapter of this job could not be read.")
        return
    strength = float(extra.get("strength") or 0.75)
    partials = int(job.params.get("partial_images") or 0) if job.params.get("stream") else 0
    settled, expired = _settled_watch.watch(job.pk), threading.Event()
    task = GenerationTask(
        source=source,
        prompt=job.prompt,
        negative_prompt=job.params.get("negative_prompt") or None,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance=job.guidance,
        seeds=[image_seed(job.seed, i) for i in range(job.n)],
        on_step=on_step,
        init_image=init_image,
        mask_image=mask_image,
        strength=strength,
        should_stop=_stop_rule(job, settled, expired),
        # LoRA adapters (issue 23), resolved by images.services.loras when the job was made.
        loras=loras,
        control=control,
        ip_adapter=ip_adapter,
    )
    if partials:  # streaming: previews at steps spread over the steps actually run
        task.preview_steps = preview_steps_for(effective_steps(task), partials)
        task.on_preview = lambda index, images: _encoder.submit(
            _publish_preview, job, index, images[0], job_steps(*last_step)
        )
    tokens = _side.submit(backend.count_tokens, source, job.prompt)  # while the pipeline runs
    try:
        result = backend.run(task, max_batch=job.model.max_batch or None, window_ms=settings.BATCH_WINDOW_MS)
        prompt_tokens = tokens.result()
    except PipelineError as exc:
        logger.warning("job %s failed: %s", job.pk, exc)
        job_fail(job_id=job.pk, code="generation_failed", message=f"Image generation failed: {exc}")
        return
    except TimeLimitExceeded:  # Dramatiq's backstop fired first: stop the lane, settle, no retry
        expired.set()
        logger.warning("job %s: Dramatiq's time limit interrupted it; its pipeline stops at the next step", job.pk)
        _fail_stopped(job, STOP_TIME_LIMIT)
        return
    except Exception as exc:  # a bug or an unexpected library error: fail now, never hang the caller
        logger.exception("job %s failed unexpectedly", job.pk)
        job_fail(
            job_id=job.pk, code="generation_failed", message=f"Image generation failed ({exc.__class__.__name__})."
        )
        return
    finally:
        _settled_watch.unwatch(job.pk)

    if result.stopped or settled.is_set():
        logger.info("job %s stopped after %d step(s): %s", job.pk, result.steps_done, result.stopped or STOP_SETTLED)
        _fail_stopped(job, result.stopped or STOP_SETTLED)
        return
    images = result.images
    if extra.get("output"):  # a vendor shape's own geometry (images/output_shape.py)
        try:
            images = [output_apply(image, extra["output"], init=init_image, mask=mask_image) for image in images]
        except Exception as exc:
            logger.exception("job %s: shaping its output failed", job.pk)
            job_fail(job_id=job.pk, code="generation_failed", message=f"Shaping the output failed: {exc}")
            return
    checked = _output_moderate(job, backend, images)
    if checked is None:  # settled: every image withheld, or the check failed
        return
    images, marks, output_moderation = checked
    delivered = [(i, image) for i, image in enumerate(images) if image is not None]
    futures = []
    try:
        if len(delivered) == 1:  # (one image: nothing to overlap, so no hand-off to an encoder thread and back)
            stored = [_encode_and_store(job, i, image, task.seeds[i], marks[i]) for i, image in delivered]
        else:
            futures = [
                _encoder.submit(_encode_and_store, job, i, image, task.seeds[i], marks[i]) for i, image in delivered
            ]
            stored = [future.result() for future in futures]
    except Exception as exc:
        logger.exception("job %s: storing images failed", job.pk)
        image_delete_files([f.result()["file"] for f in futures if f.done() and not f.exception()])
        job_fail(job_id=job.pk, code="storage_failed", message=f"Storing the images failed: {exc.__class__.__name__}")
        return
    if not job_complete(
        job=job,
        stored=stored,
        gpu_ms=int(result.seconds * 1000),
        prompt_tokens=prompt_tokens,
        output_moderation=output_moderation,
    ):
        image_delete_files([row["file"] for row in stored])


def _output_moderate(
    job: Job, backend: Any, images: list[Any]
) -> tuple[list[Any], list[dict[str, Any]], dict[str, Any]] | None:
    """The output check (issue 25; images/services/output_moderation.py): classify the
    job's images in one batch and apply the tenant's action. Returns (the images to
    deliver, None where withheld; each one's mark; the job's summary), or None when the
    job was settled here: every image withheld (`moderation_blocked`, nothing charged),
    or the classifier failed (`moderation_unavailable`: no unchecked image is delivered)."""
    action = output_action(job=job)
    if action == Tenant.OutputModeration.OFF:
        return images, [{} for _ in images], {}
    try:
        scores = backend.classify(images)
    except Exception as exc:
        logger.exception("job %s: the output classifier failed", job.pk)
        job_fail(
            job_id=job.pk,
            code="moderation_unavailable",
            message=f"The output safety check failed ({exc.__class__.__name__}); nothing was charged.",
        )
        return None
    level = output_level(job=job)
    verdicts = output_verdicts(scores=scores, level=level)
    delivered: list[Any] = []
    marks: list[dict[str, Any]] = []
    for verdict, image in zip(verdicts, images, strict=True):
        if not verdict.unsafe:
            delivered.append(image)
            marks.append({})
        elif action == Tenant.OutputModeration.BLOCK:
            blocked_output_record(job=job, verdict=verdict, image=image, level=level)
            delivered.append(None)
            marks.append({})
        else:
            delivered.append(image_blur(image) if action == Tenant.OutputModeration.BLUR else image)
            marks.append(output_mark(action=action, categories=verdict.categories))
    summary = job_output_summary(action=action, verdicts=verdicts)
    if all(image is None for image in delivered):
        logger.info("job %s: every image withheld by the output check (%s)", job.pk, summary.get("categories"))
        job_fail(
            job_id=job.pk,
            code=OUTPUT_MODERATION_BLOCKED,
            # (the Midjourney proxy's failReason shows this message as it is)
            message=f"The output safety check withheld every image ({', '.join(summary.get('categories') or [])}).",
            output_moderation=summary,
        )
        return None
    return delivered, marks, summary


def _loras(entries: Any) -> tuple[LoraSpec, ...]:
    """The job's adapters (images.services.loras.ResolvedLora.as_json) as LoraSpecs: a
    tenant's upload (`storage`) fetched to a local file first (images.lora_files). Raises
    LoraFetchError."""
    return tuple(
        LoraSpec(
            name=entry["name"],
            path=lora_local_path(entry["storage"]) if entry.get("storage") else entry["path"],
            scale=entry["scale"],
        )
        for entry in entries
    )


def _deliver_input(job: Job, extra: dict[str, Any]) -> None:
    """A job that runs no model (GenerationRequest.pipeline False: Midjourney's U1-U4,
    images/services/midjourney.py): its stored input image, shaped by the job's `output`
    spec (images/output_shape.py: `size` resizes with Lanczos), is its one image. Failing
    to read, shape or store it fails the job and releases its hold, like a pipeline error.
    The delivered image is a new one (a derived, resized image), so it goes through the
    output check and gets the watermark and manifest like any generated image (issue 25;
    a grid cell delivered blurred is blurred again, a cell withheld is never upscaled:
    images.services.midjourney.mj_cell)."""
    try:
        init_image, _ = _inputs(extra)
        if init_image is None:
            raise ValueError("the job has no input image")
        image = output_apply(init_image, extra.get("output") or {}, init=None, mask=None)
    except Exception as exc:
        logger.exception("job %s: delivering its input failed", job.pk)
        job_fail(job_id=job.pk, code="generation_failed", message=f"Image processing failed: {exc.__class__.__name__}")
        return
    checked = _output_moderate(job, get_backend(), [image])
    if checked is None:  # settled: withheld, or the check failed
        return
    images, marks, output_moderation = checked
    try:
        stored = [_encode_and_store(job, 0, images[0], job.seed, marks[0])]
    except Exception as exc:
        logger.exception("job %s: storing its image failed", job.pk)
        job_fail(job_id=job.pk, code="storage_failed", message=f"Storing the image failed: {exc.__class__.__name__}")
        return
    task_status_progress(job_id=job.pk, steps_done=job.steps)
    if not job_complete(job=job, stored=stored, gpu_ms=0, prompt_tokens=None, output_moderation=output_moderation):
        image_delete_files([row["file"] for row in stored])


def _capabilities_reconcile(job: Job, backend: Any, source: PipelineSource, *, masked: bool) -> Exception | None:
    """Compare what the model's source is (the family the backend finds in the folder it
    loads) with what the row says, correct the row when they disagree (its source edited
    by hand, copied, or never recognised), and check this job against the truth with the
    web tier's own rule (images.profiles.capabilities_check). Returns that refusal (the
    job cannot be served: the caller gets a 400, and the next request is refused before
    any hold), or None. Unknown capabilities refuse nothing."""
    model = job.model
    try:
        found = backend.capabilities(source)
    except Exception:  # informative: the job runs whatever happens here
        logger.warning("could not read the capabilities of model %s", model.public_id, exc_info=True)
        return None
    if not found:
        return None
    if found != model.capabilities or model.capabilities_source != model.source:
        # Conditional on the source this job loaded: a newer edit's own refresh wins.
        corrected = ImageModel.objects.filter(pk=model.pk, source=model.source).update(
            capabilities=found, capabilities_source=model.source
        )
        image_model_cache_clear()  # (this process's web side, embedded; others within seconds)
        if corrected and not model.capabilities:  # (a row never recognised: a seeded one's first use)
            logger.info("model %s: recorded the capabilities of its source %s", model.public_id, model.source)
        elif corrected:
            logger.warning(
                "model %s: recorded capabilities (%s family) did not match its source %s (%s family); corrected",
                model.public_id,
                (model.capabilities or {}).get("family", "unknown"),
                model.source,
                found.get("family"),
            )
        model.capabilities, model.capabilities_source = found, model.source
    fields = {"negative_prompt": job.params.get("negative_prompt") or "", "size": f"{job.width}x{job.height}"}
    try:
        capabilities_check(model=model, kind=job.kind, masked=masked, fields=fields)
    except InvalidRequest as exc:
        return exc
    return None


def _fail_stopped(job: Job, reason: str) -> None:
    """Settle a job whose pipeline was stopped: release it for our limits; leave it as
    it is when it was settled by someone else (job_fail is conditional anyway)."""
    if reason == STOP_DEADLINE:
        job_deadline_reached(job_id=job.pk)  # (the operator's deadline or the client's Cancel-After)
    elif reason == STOP_TIME_LIMIT:
        job_fail(
            job_id=job.pk,
            code="time_limit_exceeded",
            message="The job ran past its time limit; its credits were released.",
        )
