"""Running generation tasks: validation, grouping into pipeline calls, the step callback
(progress, previews, stopping) and the calls themselves.

Stopping (GenerationTask.should_stop), with batching. A call serves several tasks, so
one task wanting to stop cannot simply end it. The rule:
- before each call, tasks that want to stop are left out of it (a call left with no
  images is not made);
- after each step, a task that wants to stop is marked stopped: it gets no more
  on_step or previews, and its images from this call will be dropped, while the call
  runs on for the others (their images do not depend on their companions);
- when every task of the call has stopped, the step callback raises `_StopCall`, which
  ends the call at once (before the remaining steps and the final VAE decode).
A stopped task's result has `stopped` (the reason), `steps_done` and no images.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image as PILImage

from images.backends.base import (
    GenerationResult,
    GenerationTask,
    PipelineError,
    PipelineSource,
    effective_steps,
    error_summary,
)
from images.backends.local import adapters, config, families
from images.backends.local import control as control_module
from images.backends.local.cache import cache_key, get_pipeline
from images.backends.local.device import free_memory, generator_device, select_device
from images.backends.local.lanes import current_lane, lane_count, run_lock
from images.backends.local.previews import PREVIEW_MAX_SIZE, PreviewState
from images.backends.local.tokens import count_tokens

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts unsigned 64-bit seeds

_Item = tuple[int, int]  # (task index, image index within the task)


class _StopCall(Exception):
    """Raised from the step callback when every task of the call has stopped. diffusers
    does not catch it, so the call ends there; setting `pipe._interrupt` instead would
    skip the remaining steps but still pay for the final VAE decode."""


@dataclass
class _TaskState:
    """One task's bookkeeping over one run_batch."""

    calls: int  # pipeline calls the task's images are split over
    calls_done: int = 0
    images: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    steps_done: int = 0  # in on_step's units: calls_done * steps per call + steps of this call
    stopped: str | None = None
    previews: PreviewState = field(default_factory=PreviewState)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def validate(task: GenerationTask, index: int) -> None:
    """Raise PipelineError("task <index>: ...") if the task cannot be run as given."""

    def fail(message: str) -> PipelineError:
        return PipelineError(f"task {index}: {message}")

    if not isinstance(task.source, PipelineSource):
        raise fail("source must be a PipelineSource")
    if not isinstance(task.prompt, str):
        raise fail("prompt must be a string")
    if task.negative_prompt is not None and not isinstance(task.negative_prompt, str):
        raise fail("negative_prompt must be a string or None")
    for name in ("width", "height"):
        value = getattr(task, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8:
            raise fail(f"{name} must be a positive multiple of 8 (got {value!r})")
    if isinstance(task.steps, bool) or not isinstance(task.steps, int) or task.steps < 1:
        raise fail(f"steps must be an integer >= 1 (got {task.steps!r})")
    guidance = task.guidance
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise fail(f"guidance must be a finite number (got {task.guidance!r})")
    if not task.seeds:
        raise fail("seeds must not be empty")
    for seed in task.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise fail(f"seeds must be integers in [0, 2**64) (got {seed!r})")
    if (
        isinstance(task.strength, bool)
        or not isinstance(task.strength, (int, float))
        or not 0 < task.strength <= 1  # also rejects NaN
    ):
        raise fail(f"strength must be a number in (0, 1] (got {task.strength!r})")
    _validate_images(task, fail)
    run = effective_steps(task)
    if not isinstance(task.preview_steps, (tuple, list)):
        raise fail("preview_steps must be a tuple of step numbers")
    for number in task.preview_steps:
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= run:
            raise fail(f"preview_steps must be step numbers in 1..{run} (got {number!r})")
    for name in ("on_step", "on_preview", "should_stop"):
        if getattr(task, name) is not None and not callable(getattr(task, name)):
            raise fail(f"{name} must be callable or None")


def _validate_images(task: GenerationTask, fail: Callable[[str], PipelineError]) -> None:
    if task.mask_image is not None and task.init_image is None:
        raise fail("mask_image requires init_image")
    for name in ("control", "ip_adapter"):
        spec = getattr(task, name)
        if spec is None:
            continue
        if task.init_image is not None:
            raise fail(f"{name} runs with text-to-image only (no init_image)")
        if not isinstance(spec.source, PipelineSource) or not isinstance(spec.image, PILImage.Image):
            raise fail(f"{name} needs a PipelineSource and a PIL image")
        scale = spec.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 2:
            raise fail(f"{name} scale must be a number in [0, 2] (got {scale!r})")
    if task.control is not None and task.control.image.size != (task.width, task.height):
        width, height = task.control.image.size
        raise fail(f"the control image must be exactly {task.width}x{task.height} (got {width}x{height})")
    for name in ("init_image", "mask_image"):
        image = getattr(task, name)
        if image is None:
            continue
        if not isinstance(image, PILImage.Image):
            raise fail(f"{name} must be a PIL image")
        if image.size != (task.width, task.height):
            raise fail(f"{name} must be exactly {task.width}x{task.height} (got {image.size[0]}x{image.size[1]})")


def pipeline_strength(task: GenerationTask) -> float:
    """The strength passed to diffusers. When int(steps * strength) is 0, diffusers would
    run no step at all (an error, or an empty result): raise it just enough that the
    last, least noisy step runs."""
    strength = float(task.strength)
    if int(task.steps * strength) >= 1:
        return strength
    return min(1.0, (1.0 + 1e-6) / task.steps)


def default_max_batch() -> int:
    """Images per call when neither the caller nor the configuration says: 8 on CUDA,
    4 on MPS, 1 on CPU."""
    device, _ = select_device()
    if device.startswith("cuda"):
        return 8
    if device == "mps":
        return 4
    return 1  # measured on a 2-core CPU: batching is slower than one image per call


def resolve_max_batch(max_batch: int | None) -> int:
    """`max_batch`, else the configured max_batch (PIPELINE_MAX_BATCH), else the default."""
    if max_batch is None:
        return config.current().max_batch or default_max_batch()
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise PipelineError(f"max_batch must be an integer >= 1 (got {max_batch!r})")
    return max_batch


# ---------------------------------------------------------------------------
# One pipeline call
# ---------------------------------------------------------------------------


def _log_once(failed: set[tuple[int, str]], t: int, what: str, message: str, *args: Any) -> None:
    if (t, what) not in failed:  # once per task and run_batch, not once per step
        failed.add((t, what))
        logger.exception(message, *args)


def _stop_reason(task: GenerationTask, t: int, failed: set[tuple[int, str]]) -> str | None:
    if task.should_stop is None:
        return None
    try:
        return task.should_stop() or None
    except Exception:
        _log_once(failed, t, "stop", "should_stop callback of task %d raised; generation continues", t)
        return None


def _send_previews(
    family: families.Family,
    pipeline: Any,
    number: int,
    latents: torch.Tensor,
    due: list[int],
    tasks: list[GenerationTask],
    chunk: list[_Item],
    rows: dict[int, list[int]],
    states: dict[int, _TaskState],
    failed: set[tuple[int, str]],
) -> None:
    """Decode the rows of the tasks `due` a preview at step `number`, and hand each task
    its previews once all of its images (maybe split over calls) reached that step."""
    needed = sorted(r for t in due for r in rows[t])
    try:
        first = tasks[chunk[0][0]]
        decoded = family.decode_preview(
            pipeline, latents[needed], width=first.width, height=first.height, max_size=PREVIEW_MAX_SIZE
        )
    except PipelineError:
        for t in due:
            _log_once(failed, t, "decode", "preview decode for task %d failed; generation continues", t)
        return
    by_row = dict(zip(needed, decoded, strict=False))  # (a short decode leaves rows out)
    for t in due:
        state = states[t].previews
        pending = state.pending.setdefault(number, {})
        for r in rows[t]:
            pending[chunk[r][1]] = by_row[r]
        if len(pending) < len(tasks[t].seeds):
            continue  # the task's other images are in another call
        del state.pending[number]
        index, state.delivered = state.delivered, state.delivered + 1
        try:
            tasks[t].on_preview(index, [pending[j] for j in sorted(pending)])
        except Exception:
            _log_once(failed, t, "preview", "on_preview callback of task %d raised; generation continues", t)


def _run_chunk(
    pipe: Any,
    tasks: list[GenerationTask],
    chunk: list[_Item],
    states: dict[int, _TaskState],
    failed: set[tuple[int, str]],  # (task, what) already logged as failing (once per run_batch)
) -> tuple[list[Image.Image] | None, float]:
    """One pipeline call: its images in chunk order (None: every task stopped and the
    call was ended early) and its wall time in seconds."""
    family = families.family_of(pipe)
    first = tasks[chunk[0][0]]
    mode = family.mode_for(first.kind)
    gen_device = generator_device(pipe)
    generators = [torch.Generator(device=gen_device).manual_seed(tasks[t].seeds[j]) for t, j in chunk]
    task_ids = list(dict.fromkeys(t for t, _ in chunk))
    rows = {t: [r for r, (u, _) in enumerate(chunk) if u == t] for t in task_ids}  # task -> its rows in the batch
    preview_at = {  # task -> step numbers to preview, for tasks that want previews
        t: frozenset(tasks[t].preview_steps)
        for t in task_ids
        if tasks[t].on_preview is not None and tasks[t].preview_steps
    }

    def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        # num_timesteps is the number of steps actually run (int(steps*strength) for img2img).
        per_call = getattr(pipeline, "num_timesteps", None) or effective_steps(first)
        live = []
        for t in task_ids:
            state = states[t]
            if state.stopped:
                continue
            state.steps_done = state.calls_done * per_call + step + 1
            state.stopped = _stop_reason(tasks[t], t, failed)
            if not state.stopped:
                live.append(t)
        if not live:
            raise _StopCall
        for t in live:
            callback = tasks[t].on_step
            if callback is None:
                continue
            try:
                callback(states[t].steps_done, states[t].calls * per_call)
            except Exception:
                _log_once(failed, t, "step", "on_step callback of task %d raised; generation continues", t)
        due = [t for t in live if step + 1 in preview_at.get(t, ())]
        latents = callback_kwargs.get("latents")
        if due and latents is not None:
            _send_previews(family, pipeline, step + 1, latents, due, tasks, chunk, rows, states, failed)
        return callback_kwargs

    started = time.perf_counter()
    try:
        # Only arguments the pipeline takes, with the family's guidance and negative
        # prompt rules (images.backends.local.families.Family.call_kwargs).
        output = pipe(
            **family.call_kwargs(
                pipe,
                mode,
                tasks,
                [t for t, _ in chunk],
                strength=pipeline_strength(first),
                generators=generators,
                on_step_end=on_step_end,
            )
        )
    except _StopCall:
        return None, time.perf_counter() - started
    except torch.cuda.OutOfMemoryError as exc:
        free_memory()
        raise PipelineError(
            f"out of GPU memory generating {len(chunk)} image(s) at {first.width}x{first.height}"
        ) from exc
    except Exception as exc:
        raise PipelineError(f"generation failed: {error_summary(exc)}") from exc

    images = [image if image.mode == "RGB" else image.convert("RGB") for image in output.images]
    if len(images) != len(chunk):
        raise PipelineError("generation failed: the pipeline returned unexpected images")
    # finish() fits a native-size model's images to the task's size (images.backends.local.native).
    images = family.finish(mode, first, images, pipe=pipe)
    if any(im.size != (first.width, first.height) for im in images):
        raise PipelineError("generation failed: the pipeline returned unexpected images")
    return images, time.perf_counter() - started


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


def run_batch(
    tasks: list[GenerationTask], *, max_batch: int | None = None, lane: int | None = None
) -> list[GenerationResult]:
    """Run tasks, batching images of compatible tasks; one result per task, in order.

    Text-to-image tasks sharing (source, width, height, steps, guidance and the
    family's batch key: families.Family.batch_key) are run
    together, at most `max_batch` images per pipeline call (None: the configured
    max_batch, PIPELINE_MAX_BATCH, else 1 on CPU, 4 on MPS, 8 on CUDA). Image-to-image
    and inpainting tasks run on their own (their images still `max_batch` per call), on
    pipelines derived from the cached text-to-image one. Each image has its own seeded
    generator, so an image depends only on its seed and parameters, not on what it was
    batched with (up to float noise). All tasks are validated before anything runs; any
    failure raises PipelineError and no partial results are returned. Tasks stopped by
    their should_stop get a result with `stopped` set and no images (module docstring).
    Runs on `lane` (None: the calling thread's lane), holding that lane's lock.
    """
    if not tasks:
        return []
    for index, task in enumerate(tasks):
        validate(task, index)
    limit = resolve_max_batch(max_batch)

    groups: dict[tuple, list[int]] = {}
    for index, task in enumerate(tasks):
        if task.kind == "text2img" and task.control is None and task.ip_adapter is None:
            # Plus what the family needs shared so that companions cannot change each
            # other's images (families.Family.batch_key: negative prompt presence, prompt).
            key: tuple = (
                task.source,
                "text2img",
                task.width,
                task.height,
                task.steps,
                float(task.guidance),
                *families.family_for_source(task.source).batch_key(task),
                adapters.effective(task.loras),  # never another request's adapter (issue 23)
            )
        else:
            # Each img2img/inpaint task has its own input image(s); a ControlNet or
            # IP-Adapter task its own control or reference image.
            key = ("own call", index)
        groups.setdefault(key, []).append(index)

    failed: set[tuple[int, str]] = set()
    states: dict[int, _TaskState] = {}
    lane = current_lane() if lane is None else lane
    with run_lock(lane):
        for indices in groups.values():
            first = tasks[indices[0]]
            control = first.control.source if first.control is not None else None
            pipe = get_pipeline(first.source, first.kind, lane=lane, control=control)
            # The group's adapter set, active on the model's shared modules for its calls;
            # an IP-Adapter is attached for the call alone, with the model to itself.
            exclusive = first.ip_adapter is not None
            with (
                adapters.activate(pipe, cache_key(first.source), first.loras, exclusive=exclusive),
                control_module.ip_adapter_attached(pipe, first.ip_adapter),
            ):
                items: list[_Item] = [(t, j) for t in indices for j in range(len(tasks[t].seeds))]
                chunks = [items[k : k + limit] for k in range(0, len(items), limit)]
                # A task split over several calls reports progress over all of them.
                for t in indices:
                    states[t] = _TaskState(calls=sum(any(i[0] == t for i in c) for c in chunks))
                for planned in chunks:
                    for t in dict.fromkeys(t for t, _ in planned):
                        if not states[t].stopped:
                            states[t].stopped = _stop_reason(tasks[t], t, failed)
                    chunk = [item for item in planned if not states[item[0]].stopped]
                    if not chunk:
                        continue
                    chunk_images, elapsed = _run_chunk(pipe, tasks, chunk, states, failed)
                    for r, (t, _) in enumerate(chunk):
                        states[t].seconds += elapsed / len(chunk)  # shared call time, split per image
                        if chunk_images is not None and not states[t].stopped:
                            states[t].images.append(chunk_images[r])
                    for t in dict.fromkeys(t for t, _ in chunk):
                        states[t].calls_done += 1
    results = []
    for index in range(len(tasks)):
        state = states[index]
        images = [] if state.stopped else state.images
        results.append(
            GenerationResult(images=images, seconds=state.seconds, steps_done=state.steps_done, stopped=state.stopped)
        )
    return results


def warm_up(source: PipelineSource, lanes: int | None = None) -> None:
    """Load the pipeline and run one small generation (1 step, with CFG) at each of the
    configured warmup_sizes (PIPELINE_WARMUP_SIZES) on each of `lanes` lanes (None:
    lane_count()), and load the token counter. Raises PipelineError."""
    started = time.perf_counter()
    for lane in range(lane_count() if lanes is None else lanes):
        for width, height in config.current().warmup_sizes:
            run_batch(
                [
                    GenerationTask(
                        source=source,
                        prompt="warm up",
                        negative_prompt=None,
                        width=width,
                        height=height,
                        steps=1,
                        guidance=2.0,
                        seeds=[0],
                    )
                ],
                max_batch=1,
                lane=lane,
            )
    count_tokens(source, "warm up")
    logger.info("warmed up %s in %.1fs", source.source, time.perf_counter() - started)
