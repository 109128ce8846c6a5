"""The GPU/torch layer: loading diffusers pipelines and running generation batches.

This module, `images.demo_model` and `images.arch_models` (random-weight model builders)
are the only ones that import torch and diffusers;
nothing here imports Django, so the web tier never pays for torch and this layer can be
tested on its own.

Concurrency model: a process runs pipeline calls on `lane_count()` lanes. A lane is one
thread with its own pipeline objects (diffusers pipelines and schedulers keep per-call
state) sharing one set of weights; a lock per lane (`_run_lock`) serialises the calls of
that lane, and a second lock guards the pipeline cache. On CUDA/MPS there is one lane
(one call at a time; batching fills the device); on CPU one lane per core, each with one
torch thread (measured: two single-threaded calls side by side make ~1.6x the images of
one call on two threads, see docs/benchmarks.md).
"""
from __future__ import annotations

import copy
import gc
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# No telemetry pings from the hub clients. HF_HUB_OFFLINE is deliberately NOT forced:
# `local_files_only=True` (the default of PipelineSource) already keeps from_pretrained
# off the network, and forcing offline mode process-wide would silently break an
# operator's `local_files_only=False`.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "GenerationResult",
    "GenerationTask",
    "PipelineError",
    "PipelineSource",
    "count_tokens",
    "decode_latents_preview",
    "device_info",
    "configure_threads",
    "current_lane",
    "effective_steps",
    "get_pipeline",
    "lane_count",
    "preview_steps_for",
    "run_batch",
    "select_device",
    "set_lane",
    "usable_cores",
    "warm_up",
    "warmup_sizes",
]

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
_TRUE = {"1", "true", "yes", "on"}
_MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts unsigned 64-bit seeds


@dataclass(frozen=True)
class PipelineSource:
    source: str  # local directory or hub id
    dtype: str = "auto"  # "auto" | "float16" | "bfloat16" | "float32"; auto = fp16 on CUDA/MPS, fp32 on CPU
    local_files_only: bool = True  # the operator may set False to allow hub downloads


@dataclass
class GenerationTask:
    source: PipelineSource
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float
    seeds: list[int]  # one seed per image
    # Called (steps_done, steps_total) after each denoising step. Exceptions it raises
    # are logged and swallowed. It runs on the lane, holding its lock: keep it quick
    # and never call run_batch/warm_up from it (that would deadlock).
    on_step: Callable[[int, int], None] | None = None
    # Image-to-image source, RGB, exactly width x height (the caller resizes). When set,
    # the task is image-to-image (or inpainting, with mask_image).
    init_image: Image.Image | None = None
    # Inpainting mask, L, exactly width x height, diffusers convention: white (255) =
    # repaint, black (0) = keep. Requires init_image.
    mask_image: Image.Image | None = None
    # 0 < strength <= 1, img2img/inpaint only: how far the result may move away from the
    # input. diffusers runs min(int(steps * strength), steps) steps (see effective_steps).
    strength: float = 0.75
    # 1-based step numbers (counted in steps actually run) after which the current
    # latents are decoded into small previews and handed to on_preview.
    preview_steps: tuple[int, ...] = ()
    # Called (preview_index, previews): preview_index counts 0, 1, 2... per task; one
    # small RGB preview per image of the task, in seed order. Same rules as on_step:
    # exceptions are logged and swallowed; runs on the lane, holding its lock.
    on_preview: Callable[[int, list[Image.Image]], None] | None = None

    @property
    def kind(self) -> str:
        """The task's kind: "text2img", "img2img" or "inpaint"."""
        if self.init_image is None:
            return "text2img"
        return "img2img" if self.mask_image is None else "inpaint"


@dataclass
class GenerationResult:
    images: list[Image.Image]  # len == len(task.seeds), RGB, exactly width x height
    seconds: float  # wall time of the pipeline call(s) attributable to this task


class PipelineError(Exception):
    """A load or generation failure; the message is short and meant for humans."""


# ---------------------------------------------------------------------------
# Device and dtype
# ---------------------------------------------------------------------------

def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def select_device() -> tuple[str, torch.dtype]:
    """CUDA (fp16) > MPS (fp16) > CPU (fp32); env PLATFORM_DEVICE (cpu/cuda[:N]/mps) overrides."""
    wanted = os.environ.get("PLATFORM_DEVICE", "").strip().lower()
    if wanted in ("", "auto"):
        if torch.cuda.is_available():
            return "cuda", torch.float16
        if _mps_available():
            return "mps", torch.float16
        return "cpu", torch.float32
    kind = wanted.split(":", 1)[0]
    if kind == "cpu":
        return "cpu", torch.float32
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError("PLATFORM_DEVICE asks for CUDA but no CUDA device is available")
        return wanted, torch.float16
    if kind == "mps":
        if not _mps_available():
            raise PipelineError("PLATFORM_DEVICE asks for MPS but MPS is not available")
        return "mps", torch.float16
    raise PipelineError(f"PLATFORM_DEVICE must be cpu, cuda or mps, not {wanted!r}")


def _resolve_dtype(name: str, default: torch.dtype) -> torch.dtype:
    if name == "auto":
        return default
    try:
        return _DTYPES[name]
    except KeyError:
        raise PipelineError(f"unknown dtype {name!r} (expected auto, float16, bfloat16 or float32)") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_info() -> dict:
    import diffusers

    device, dtype = select_device()
    cuda_name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {
        "device": device,
        "dtype": _dtype_name(dtype),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cuda_name": cuda_name,
    }


def _short(exc: BaseException, limit: int = 200) -> str:
    """A one-line description of an exception, with no traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PipelineError(f"{name} must be an integer, not {raw!r}") from None
    if value < 1:
        raise PipelineError(f"{name} must be at least 1")
    return value


# ---------------------------------------------------------------------------
# Lanes
# ---------------------------------------------------------------------------

_LANE = threading.local()
_RUN_LOCKS: dict[int, threading.Lock] = {}
_RUN_LOCKS_GUARD = threading.Lock()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _compile_wanted() -> bool:
    return os.environ.get("PIPELINE_COMPILE", "").strip().lower() in _TRUE


def _processes() -> int:
    """Worker processes sharing this machine (set by `manage.py runworker`; 1 otherwise)."""
    return _env_int("PLATFORM_WORKER_PROCESSES", 1)


def lane_count(processes: int | None = None) -> int:
    """How many pipeline calls a process runs side by side: env PIPELINE_LANES, else 1
    on CUDA/MPS and, on CPU, the process's share of the usable cores (at most 4) when
    `processes` worker processes (None: this one's count) share the machine."""
    explicit = _env_int("PIPELINE_LANES", 0)
    if explicit:
        return explicit
    device, _ = select_device()
    if device != "cpu" or _compile_wanted():  # (compiled graphs: one caller at a time)
        return 1
    return max(1, min(4, usable_cores() // (processes or _processes())))


def configure_threads(lanes: int) -> int:
    """On CPU, give each lane of each worker process an equal share of the cores as
    torch intra-op threads (unless the operator set OMP_NUM_THREADS, which torch
    honours itself). Returns torch's thread count for threads started from now on."""
    device, _ = select_device()
    if device == "cpu" and not os.environ.get("OMP_NUM_THREADS", "").strip():
        torch.set_num_threads(max(1, usable_cores() // (_processes() * max(1, lanes))))
    return torch.get_num_threads()


def set_lane(index: int) -> None:
    """Make the calling thread lane `index` (done once by each lane thread)."""
    _LANE.index = index


def current_lane() -> int:
    """The calling thread's lane; threads that are not lanes use lane 0."""
    return getattr(_LANE, "index", 0)


def _run_lock(lane: int) -> threading.Lock:
    with _RUN_LOCKS_GUARD:
        return _RUN_LOCKS.setdefault(lane, threading.Lock())


# ---------------------------------------------------------------------------
# Loading and the pipeline cache
# ---------------------------------------------------------------------------

_CACHE: OrderedDict[tuple, Any] = OrderedDict()  # cache key -> text-to-image pipeline (lane 0)
# (cache key, kind, lane) -> the pipeline for every other (kind, lane): lane clones of
# the text-to-image pipeline with their own scheduler and tokenizers, and img2img /
# inpaint pipelines derived from a lane's text-to-image one with from_pipe. All share
# the cached pipeline's modules, so no extra weights. Evicted with their base.
_VARIANTS: dict[tuple, Any] = {}
# cache key -> (lock, tokenizer copy) for count_tokens, which runs outside the lanes.
_COUNTING: dict[tuple, tuple[threading.Lock, Any]] = {}
_KINDS = ("text2img", "img2img", "inpaint")
_CACHE_LOCK = threading.Lock()
_TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isabs(source) or os.path.isdir(source)


def _load(source: PipelineSource, device: str, dtype: torch.dtype) -> Any:
    import diffusers.utils.logging
    import transformers.utils.logging
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    # Loading bars are noise in worker logs (this module is the only diffusers user).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    location = os.path.expanduser(source.source) if source.source.startswith("~") else source.source
    if _looks_like_path(source.source) and not os.path.isdir(location):
        raise PipelineError(f"model folder not found: {source.source}")
    started = time.perf_counter()
    try:
        config = DiffusionPipeline.load_config(location, local_files_only=source.local_files_only)
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": source.local_files_only}
        if "safety_checker" in config:  # SD 1.x/2.x; other pipelines would warn about the kwargs
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = AutoPipelineForText2Image.from_pretrained(location, **kwargs)
        pipe.to(device)
    except Exception as exc:
        raise PipelineError(f"could not load model {source.source!r}: {_short(exc)}") from exc

    pipe.set_progress_bar_config(disable=True)
    # diffusers already uses torch's scaled_dot_product_attention (AttnProcessor2_0)
    # by default on torch >= 2, so nothing to enable for SDPA.
    if device.startswith("cuda") and getattr(pipe, "unet", None) is not None:
        pipe.unet.to(memory_format=torch.channels_last)
    if _compile_wanted() and getattr(pipe, "unet", None) is not None:
        # Compiled lazily, on the first call at each shape: warm_up makes those calls at
        # start for PIPELINE_WARMUP_SIZES. Lanes clone the pipeline, so they share this.
        pipe.unet = torch.compile(pipe.unet, mode=os.environ.get("PIPELINE_COMPILE_MODE", "").strip() or None,
                                  backend=os.environ.get("PIPELINE_COMPILE_BACKEND", "").strip() or "inductor")
    vae = getattr(pipe, "vae", None)
    if vae is not None and os.environ.get("PIPELINE_VAE_TILING", "").strip().lower() in _TRUE:
        vae.enable_tiling()  # lower peak memory for large images; changes pixels slightly
    logger.info(
        "loaded %s (%s) on %s as %s in %.1fs (torch threads: %d)",
        source.source, type(pipe).__name__, device, _dtype_name(dtype), time.perf_counter() - started,
        torch.get_num_threads(),
    )
    return pipe


def _derive(base: Any, kind: str, source: PipelineSource) -> Any:
    """The img2img/inpaint pipeline sharing base's components (diffusers' from_pipe)."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    auto = AutoPipelineForImage2Image if kind == "img2img" else AutoPipelineForInpainting
    try:
        # The Auto* classes map e.g. StableDiffusionPipeline -> StableDiffusionImg2ImgPipeline
        # / StableDiffusionInpaintPipeline (SDXL etc. likewise). Unlike
        # DiffusionPipeline.from_pipe they do not cast the (shared!) modules to a dtype.
        pipe = auto.from_pipe(base)
    except Exception as exc:
        label = "image-to-image" if kind == "img2img" else "inpainting"
        raise PipelineError(f"model {source.source!r} does not support {label}: {_short(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    logger.info("derived %s pipeline %s for %s", kind, type(pipe).__name__, source.source)
    return pipe


def _lane_clone(base: Any) -> Any:
    """A text-to-image pipeline sharing base's modules, with its own scheduler and
    tokenizers (both keep per-call state), for another lane."""
    from diffusers import AutoPipelineForText2Image

    overrides: dict[str, Any] = {"scheduler": base.scheduler.__class__.from_config(base.scheduler.config)}
    for name in _TOKENIZERS:
        if getattr(base, name, None) is not None:
            overrides[name] = copy.deepcopy(getattr(base, name))
    pipe = AutoPipelineForText2Image.from_pipe(base, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cache_key(source: PipelineSource) -> tuple:
    device, default_dtype = select_device()
    return (source.source, source.local_files_only, device, _resolve_dtype(source.dtype, default_dtype))


def get_pipeline(source: PipelineSource, kind: str = "text2img", *, lane: int | None = None) -> Any:
    """Load (or fetch from the per-process LRU cache) the pipeline for source.

    kind "text2img" (default) is the pipeline loaded from the model folder; "img2img"
    and "inpaint" are derived from it with diffusers' from_pipe (sharing its unet, vae,
    text encoder, tokenizer and scheduler objects: no extra weights, no reload) and
    cached alongside it; evicting a model evicts its derived pipelines too. Each lane
    (None: the calling thread's) gets its own pipeline objects over the same modules.

    The cache holds at most PIPELINE_CACHE_SIZE models (env, default 2). Loading
    happens under the cache lock, so concurrent callers wait rather than load twice.
    """
    if kind not in _KINDS:
        raise PipelineError(f"unknown pipeline kind {kind!r} (expected one of {', '.join(_KINDS)})")
    lane = current_lane() if lane is None else lane
    key = _cache_key(source)
    device, dtype = key[2], key[3]
    with _CACHE_LOCK:
        pipe = _CACHE.get(key)
        if pipe is not None:
            _CACHE.move_to_end(key)
        else:
            # Make room first, so the old weights can be freed before the new ones arrive.
            size = _env_int("PIPELINE_CACHE_SIZE", 2)
            evicted = False
            while len(_CACHE) >= size:
                old_key, _ = _CACHE.popitem(last=False)
                for variant_key in [k for k in _VARIANTS if k[0] == old_key]:
                    del _VARIANTS[variant_key]
                _COUNTING.pop(old_key, None)
                logger.info("evicted pipeline %s from the cache", old_key[0])
                evicted = True
            if evicted:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            pipe = _load(source, device, dtype)
            _CACHE[key] = pipe
        if lane != 0:
            clone = _VARIANTS.get((key, "text2img", lane))
            if clone is None:
                clone = _VARIANTS[(key, "text2img", lane)] = _lane_clone(pipe)
            pipe = clone
        if kind == "text2img":
            return pipe
        derived = _VARIANTS.get((key, kind, lane))
        if derived is None:
            derived = _VARIANTS[(key, kind, lane)] = _derive(pipe, kind, source)
        return derived


def _clear_cache() -> None:
    """Drop every cached pipeline (for tests and operators)."""
    with _CACHE_LOCK:
        _VARIANTS.clear()
        _COUNTING.clear()
        _CACHE.clear()
    gc.collect()


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------

def _validate(task: GenerationTask, index: int) -> None:
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
    if isinstance(task.guidance, bool) or not isinstance(task.guidance, (int, float)) or not math.isfinite(task.guidance):
        raise fail(f"guidance must be a finite number (got {task.guidance!r})")
    if not task.seeds:
        raise fail("seeds must not be empty")
    for seed in task.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
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
    for name in ("on_step", "on_preview"):
        if getattr(task, name) is not None and not callable(getattr(task, name)):
            raise fail(f"{name} must be callable or None")


def _validate_images(task: GenerationTask, fail: Callable[[str], PipelineError]) -> None:
    from PIL import Image as PILImage

    if task.mask_image is not None and task.init_image is None:
        raise fail("mask_image requires init_image")
    for name in ("init_image", "mask_image"):
        image = getattr(task, name)
        if image is None:
            continue
        if not isinstance(image, PILImage.Image):
            raise fail(f"{name} must be a PIL image")
        if image.size != (task.width, task.height):
            raise fail(f"{name} must be exactly {task.width}x{task.height} (got {image.size[0]}x{image.size[1]})")


def effective_steps(task: GenerationTask) -> int:
    """How many denoising steps the task's pipeline call actually runs: `steps` for
    text-to-image; max(1, min(int(steps * strength), steps)) for img2img/inpaint
    (diffusers' count, but at least one step: see _pipeline_strength). on_step totals
    and preview_steps count in these steps."""
    if task.init_image is None:
        return task.steps
    return max(1, min(int(task.steps * task.strength), task.steps))


def _pipeline_strength(task: GenerationTask) -> float:
    """The strength passed to diffusers. When int(steps * strength) is 0, diffusers would
    run no step at all (an error, or an empty result): raise it just enough that the
    last, least noisy step runs."""
    strength = float(task.strength)
    if int(task.steps * strength) >= 1:
        return strength
    return min(1.0, (1.0 + 1e-6) / task.steps)


def preview_steps_for(total_steps: int, count: int) -> tuple[int, ...]:
    """`count` step numbers spread evenly over 1..total_steps-1 (never the last step,
    whose result is the final image): e.g. (4, 2) -> (1, 3), (20, 3) -> (5, 10, 15),
    (30, 1) -> (15,). When fewer than `count` steps come before the last one, all of
    them: (3, 3) -> (1, 2); (1, n) -> (). For img2img/inpaint pass effective_steps(task).
    """
    for name, value in (("total_steps", total_steps), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer (got {value!r})")
    before_last = max(0, total_steps - 1)
    if before_last <= count:
        return tuple(range(1, before_last + 1))
    # Steps total*(i+1)/(count+1), rounded half up: more than one step apart, so unique.
    return tuple(
        min(before_last, max(1, (2 * total_steps * (i + 1) + count + 1) // (2 * (count + 1))))
        for i in range(count)
    )


def _default_max_batch() -> int:
    device, _ = select_device()
    if device.startswith("cuda"):
        return 8
    if device == "mps":
        return 4
    return 1  # measured on a 2-core CPU: batching is slower than one image per call


def _resolve_max_batch(max_batch: int | None) -> int:
    if max_batch is None:
        return _env_int("PIPELINE_MAX_BATCH", 0) or _default_max_batch()
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise PipelineError(f"max_batch must be an integer >= 1 (got {max_batch!r})")
    return max_batch


def _generator_device(pipe: Any) -> str:
    # Generators live on the pipeline's device for CUDA (fast, and how CUDA users seed);
    # CPU generators elsewhere (MPS generators are less reproducible; diffusers moves
    # CPU-made noise over). Note: a seed gives different images on CUDA and on CPU.
    device = pipe.device
    return str(device) if device.type == "cuda" else "cpu"


_Item = tuple[int, int]  # (task index, image index within the task)
_PREVIEW_MAX_SIZE = 256  # longest side of a preview, in pixels


@dataclass
class _PreviewState:
    delivered: int = 0  # previews handed to on_preview so far
    # step number -> {image index: preview}, while a task split over several calls
    # has not yet reached that step in all of them
    pending: dict[int, dict[int, Any]] = field(default_factory=dict)


def _call_kwargs(kind: str, first: GenerationTask, size: int) -> dict[str, Any]:
    """The image inputs of one pipeline call of `size` images of task `first`'s kind."""
    if kind == "text2img":
        return {"width": first.width, "height": first.height}
    init = first.init_image if first.init_image.mode == "RGB" else first.init_image.convert("RGB")
    # One copy per image: with a list of generators diffusers encodes each copy with
    # its own generator, so an image depends only on its seed.
    kwargs: dict[str, Any] = {"image": [init] * size, "strength": _pipeline_strength(first)}
    if kind == "inpaint":
        mask = first.mask_image if first.mask_image.mode == "L" else first.mask_image.convert("L")
        kwargs.update(mask_image=[mask] * size, width=first.width, height=first.height)
    return kwargs


def _keep_unmasked(first: GenerationTask, images: list[Image.Image]) -> list[Image.Image]:
    """Paste the input back where the mask is black (softly where it is grey).

    The inpaint pipeline already keeps the black region at the input's latents, but a
    VAE round trip is lossy (colour shifts, blur; with the random demo VAE: garbage),
    so the final composite in pixel space makes "keep" mean keep.
    """
    from PIL import Image as PILImage

    init = first.init_image if first.init_image.mode == "RGB" else first.init_image.convert("RGB")
    mask = first.mask_image if first.mask_image.mode == "L" else first.mask_image.convert("L")
    return [PILImage.composite(image, init, mask) for image in images]


def _run_chunk(
    pipe: Any,
    tasks: list[GenerationTask],
    chunk: list[_Item],
    progress: dict[int, tuple[int, int]],  # task -> (chunks already done, chunks in all)
    failed: set[tuple[int, str]],  # (task, what) already logged as failing (once per run_batch)
    previews: dict[int, _PreviewState],
) -> tuple[list[Image.Image], float]:
    first = tasks[chunk[0][0]]
    kind = first.kind
    prompts = [tasks[t].prompt for t, _ in chunk]
    negatives = [tasks[t].negative_prompt for t, _ in chunk]
    gen_device = _generator_device(pipe)
    generators = [torch.Generator(device=gen_device).manual_seed(tasks[t].seeds[j]) for t, j in chunk]
    task_ids = list(dict.fromkeys(t for t, _ in chunk))
    rows = {t: [r for r, (u, _) in enumerate(chunk) if u == t] for t in task_ids}  # task -> its rows in the batch
    preview_at = {  # task -> step numbers to preview, for tasks that want previews
        t: frozenset(tasks[t].preview_steps)
        for t in task_ids
        if tasks[t].on_preview is not None and tasks[t].preview_steps
    }

    def log_once(t: int, what: str, message: str, *args: Any) -> None:
        if (t, what) not in failed:  # once per task, not once per step
            failed.add((t, what))
            logger.exception(message, *args)

    def send_previews(pipeline: Any, number: int, latents: torch.Tensor, due: list[int]) -> None:
        needed = sorted(r for t in due for r in rows[t])
        try:
            decoded = decode_latents_preview(pipeline, latents[needed], max_size=_PREVIEW_MAX_SIZE)
        except PipelineError:
            for t in due:
                log_once(t, "decode", "preview decode for task %d failed; generation continues", t)
            return
        by_row = dict(zip(needed, decoded))
        for t in due:
            state = previews[t]
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
                log_once(t, "preview", "on_preview callback of task %d raised; generation continues", t)

    def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        # num_timesteps is the number of steps actually run (int(steps*strength) for img2img).
        per_chunk = getattr(pipeline, "num_timesteps", None) or effective_steps(first)
        for t in task_ids:
            callback = tasks[t].on_step
            if callback is None:
                continue
            done_chunks, all_chunks = progress[t]
            try:
                callback(done_chunks * per_chunk + step + 1, all_chunks * per_chunk)
            except Exception:
                log_once(t, "step", "on_step callback of task %d raised; generation continues", t)
        due = [t for t, numbers in preview_at.items() if step + 1 in numbers]
        latents = callback_kwargs.get("latents")
        if due and latents is not None:
            send_previews(pipeline, step + 1, latents, due)
        return callback_kwargs

    started = time.perf_counter()
    try:
        output = pipe(
            prompt=prompts,
            # None and "" are the same unconditional prompt for diffusers; only pass a
            # list when some task has a negative prompt.
            negative_prompt=None if all(n is None for n in negatives) else [n or "" for n in negatives],
            num_inference_steps=first.steps,
            guidance_scale=float(first.guidance),
            num_images_per_prompt=1,
            generator=generators,
            output_type="pil",
            callback_on_step_end=on_step_end,
            **_call_kwargs(kind, first, len(chunk)),
        )
    except torch.cuda.OutOfMemoryError as exc:
        gc.collect()
        torch.cuda.empty_cache()
        raise PipelineError(
            f"out of GPU memory generating {len(chunk)} image(s) at {first.width}x{first.height}"
        ) from exc
    except Exception as exc:
        raise PipelineError(f"generation failed: {_short(exc)}") from exc

    images = [image if image.mode == "RGB" else image.convert("RGB") for image in output.images]
    if len(images) != len(chunk) or any(im.size != (first.width, first.height) for im in images):
        raise PipelineError("generation failed: the pipeline returned unexpected images")
    if kind == "inpaint":
        images = _keep_unmasked(first, images)
    return images, time.perf_counter() - started


def run_batch(tasks: list[GenerationTask], *, max_batch: int | None = None,
              lane: int | None = None) -> list[GenerationResult]:
    """Run tasks, batching images of compatible tasks; one result per task, in order.

    Text-to-image tasks sharing (source, width, height, steps, guidance) are run
    together, at most `max_batch` images per pipeline call (None: env PIPELINE_MAX_BATCH,
    else 1 on CPU, 4 on MPS, 8 on CUDA). Image-to-image and inpainting tasks run on
    their own (their images still `max_batch` per call), on pipelines derived from the
    cached text-to-image one. Each image has its own seeded generator, so an image
    depends only on its seed and parameters, not on what it was batched with (up to
    float noise). All tasks are validated before anything runs; any failure raises
    PipelineError and no partial results are returned. Runs on `lane` (None: the
    calling thread's lane), holding that lane's lock.
    """
    if not tasks:
        return []
    for index, task in enumerate(tasks):
        _validate(task, index)
    limit = _resolve_max_batch(max_batch)

    groups: dict[tuple, list[int]] = {}
    for index, task in enumerate(tasks):
        if task.kind == "text2img":
            key: tuple = (task.source, "text2img", task.width, task.height, task.steps, float(task.guidance))
        else:
            key = ("own call", index)  # each img2img/inpaint task has its own input image(s)
        groups.setdefault(key, []).append(index)

    images: list[list[Image.Image]] = [[] for _ in tasks]
    seconds = [0.0] * len(tasks)
    failed: set[tuple[int, str]] = set()
    previews = {index: _PreviewState() for index in range(len(tasks))}
    lane = current_lane() if lane is None else lane
    with _run_lock(lane):
        for indices in groups.values():
            first = tasks[indices[0]]
            pipe = get_pipeline(first.source, first.kind, lane=lane)
            items: list[_Item] = [(t, j) for t in indices for j in range(len(tasks[t].seeds))]
            chunks = [items[k : k + limit] for k in range(0, len(items), limit)]
            # A task split over several calls reports progress over all of them.
            progress = {t: (0, sum(any(i[0] == t for i in c) for c in chunks)) for t in indices}
            for chunk in chunks:
                chunk_images, elapsed = _run_chunk(pipe, tasks, chunk, progress, failed, previews)
                for (t, _), image in zip(chunk, chunk_images):
                    images[t].append(image)
                    seconds[t] += elapsed / len(chunk)  # shared call time, split per image
                for t in dict.fromkeys(t for t, _ in chunk):
                    done, total = progress[t]
                    progress[t] = (done + 1, total)
    return [GenerationResult(images=imgs, seconds=secs) for imgs, secs in zip(images, seconds)]


def warmup_sizes() -> list[tuple[int, int]]:
    """PIPELINE_WARMUP_SIZES ("512x512,1024x1024"; default 64x64): the sizes warm_up
    runs once each, so that a compiled pipeline (PIPELINE_COMPILE) is compiled for the
    sizes served before the first request rather than during it."""
    raw = os.environ.get("PIPELINE_WARMUP_SIZES", "").strip() or "64x64"
    sizes = []
    for item in raw.split(","):
        try:
            width, height = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise PipelineError(f"PIPELINE_WARMUP_SIZES must look like 512x512,1024x1024, not {raw!r}") from None
        sizes.append((width, height))
    return sizes


def warm_up(source: PipelineSource, lanes: int | None = None) -> None:
    """Load the pipeline and run one small generation (1 step, with CFG) at each of
    warmup_sizes() on each of `lanes` lanes (None: lane_count())."""
    started = time.perf_counter()
    for lane in range(lane_count() if lanes is None else lanes):
        for width, height in warmup_sizes():
            run_batch(
                [GenerationTask(source=source, prompt="warm up", negative_prompt=None, width=width,
                                height=height, steps=1, guidance=2.0, seeds=[0])],
                max_batch=1, lane=lane,
            )
    count_tokens(source, "warm up")
    logger.info("warmed up %s in %.1fs", source.source, time.perf_counter() - started)


def decode_latents_preview(pipe: Any, latents: torch.Tensor, *, max_size: int = 256) -> list[Image.Image]:
    """Decode intermediate latents (e.g. callback_kwargs["latents"]) into small RGB previews.

    Latents are shrunk first so that the preview's longest side is about `max_size`
    pixels: the VAE decode is the expensive part, and it scales with the area. Meant to
    be called from inside a step callback (i.e. on the lane, holding its lock).
    """
    try:
        vae = pipe.vae
        with torch.no_grad():
            lat = latents.detach()
            height, width = lat.shape[-2:]
            longest = max(1, max_size // pipe.vae_scale_factor)
            if max(height, width) > longest:
                scale = longest / max(height, width)
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                lat = F.interpolate(lat.float(), size=size, mode="area")
            lat = lat.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
            shift = getattr(vae.config, "shift_factor", None)
            if shift:
                lat = lat + shift
            decoded = vae.decode(lat, return_dict=False)[0]
            decoded = torch.nan_to_num(decoded.float())
        previews = pipe.image_processor.postprocess(decoded, output_type="pil")
    except Exception as exc:
        raise PipelineError(f"preview decode failed: {_short(exc)}") from exc
    return [image if image.mode == "RGB" else image.convert("RGB") for image in previews]


def count_tokens(source: PipelineSource, text: str) -> int | None:
    """How many tokens the pipeline's (first) tokenizer makes of `text`, without
    truncation; None when the pipeline has no tokenizer. Used for `usage`. Uses its own
    copy of the tokenizer (lanes may be tokenizing at the same time)."""
    pipe = get_pipeline(source, lane=0)
    if getattr(pipe, "tokenizer", None) is None:
        return None
    key = _cache_key(source)
    with _CACHE_LOCK:
        if key not in _COUNTING:
            _COUNTING[key] = (threading.Lock(), copy.deepcopy(pipe.tokenizer))
        lock, tokenizer = _COUNTING[key]
    try:
        with lock:
            return len(tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"])
    except Exception:  # a tokenizer quirk must never fail a finished generation
        logger.warning("could not count tokens for %s", source.source, exc_info=True)
        return None
