"""The interface between a job and whatever runs its model: tasks in, images out.

Torch-free on purpose (house style rule 4): the web tier, the job services and the
management commands may import these types and helpers without paying for torch. A
worker asks `get_backend()` for its process's backend; today that is always the local
one (diffusers in this process, `images.backends.local`). Another backend (a remote GPU
pool, a vendor API) would implement `Backend` and nothing else would change.

Stopping. A task may carry `should_stop`, asked before each pipeline call and after
each denoising step. When it answers a reason the backend stops working for that task
and returns a result with `stopped` set and no images. Tasks batched into one call stop
that call only when every one of them wants to stop; until then the call runs on and
the stopping task's share of it is dropped (see images.backends.local.runner).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "Backend",
    "ControlSpec",
    "GenerationResult",
    "GenerationTask",
    "IPAdapterSpec",
    "LoraSpec",
    "PipelineError",
    "PipelineSource",
    "ToolResult",
    "ToolTask",
    "effective_steps",
    "error_summary",
    "preview_steps_for",
]


@dataclass(frozen=True)
class PipelineSource:
    source: str  # local directory or hub id
    # "auto" | "float16" | "bfloat16" | "float32"; auto = the family's published dtype on CUDA
    # (bf16 for transformer families), fp16 on MPS, fp32 on CPU
    dtype: str = "auto"
    local_files_only: bool = True  # the operator may set False to allow hub downloads


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA adapter a task runs with (issue 23): the catalog name, the resolved
    file or folder (images.services.loras), and its scale in [-2, 2] (0 = not applied)."""

    name: str
    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class ControlSpec:
    """A ControlNet a task runs with (Stability's control/sketch and control/structure,
    images/control.py): the ControlNet model's source, its control image (RGB, exactly
    the task's width x height: edges or depth as the ControlNet was trained on) and
    `scale`, diffusers' controlnet_conditioning_scale (0 = the plain generation)."""

    source: PipelineSource
    image: Image.Image
    scale: float = 1.0


@dataclass(frozen=True)
class IPAdapterSpec:
    """An IP-Adapter a task runs with (Stability's control/style): the adapter folder's
    source (ip-adapter.safetensors + image_encoder/), the reference image (RGB, any
    size: its image processor resizes it) and `scale`, set_ip_adapter_scale's value
    (0 = the reference is ignored)."""

    source: PipelineSource
    image: Image.Image
    scale: float = 0.5


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
    # and never call into the backend from it (that would deadlock).
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
    # small RGB preview per image of the task, in seed order. Called after on_step for
    # the same step. Same rules as on_step: exceptions are logged and swallowed; runs on
    # the lane, holding its lock.
    on_preview: Callable[[int, list[Image.Image]], None] | None = None
    # Asked before each pipeline call of the task and after each of its denoising steps
    # (before that step's on_step and previews): a non-empty string (the reason, e.g.
    # "time_limit") stops the task there; None or "" carries on. Must be cheap (it runs
    # on the lane every step: read a flag or a clock, never the database). Exceptions are
    # logged and count as "carry on".
    should_stop: Callable[[], str | None] | None = None
    # LoRA adapters to apply, in request order (issue 23); () = the base model. Tasks
    # batch only with tasks of the same effective adapter set (adapters.effective).
    loras: tuple[LoraSpec, ...] = ()
    # A ControlNet and / or an IP-Adapter (Stability's control/*): text-to-image only,
    # and such a task always runs in a call of its own (never batched with others).
    control: ControlSpec | None = None
    ip_adapter: IPAdapterSpec | None = None

    @property
    def kind(self) -> str:
        """The task's kind: "text2img", "img2img" or "inpaint"."""
        if self.init_image is None:
            return "text2img"
        return "img2img" if self.mask_image is None else "inpaint"


@dataclass
class GenerationResult:
    # len == len(task.seeds), RGB, exactly width x height, in seed order; [] when stopped.
    images: list[Image.Image]
    seconds: float  # wall time of the pipeline call(s) attributable to this task
    # Denoising steps run for this task, in on_step's units (all of its calls together:
    # effective_steps(task) per call).
    steps_done: int = 0
    # None when the task ran to the end; else the reason its should_stop gave.
    stopped: str | None = None


# Tool kinds (issue 26 item 1): ImageModel.Kind of the model -> what a ToolTask does.
TOOL_UPSCALE = "upscale"  # RGB in, RGB out, `scale` times wider and higher (ESRGAN-class, or SD x4)
TOOL_REMOVE_BACKGROUND = "remove_bg"  # RGB in, RGBA out: the subject kept, the background transparent
TOOL_SEGMENT = "segment"  # RGB and a text in, an L mask out (255 = what the text names)
TOOL_DESCRIBE = "describe"  # RGB in, a caption out
TOOL_DEPTH = "depth"  # RGB in, an L depth map out (of the input's size, 0-255, near = light)


@dataclass
class ToolTask:
    """One input image for a tool model (images/tool_models.py; docs/models.md).

    `kind` is one of the TOOL_* values above; `text` what a segmenter looks for, or a
    diffusion upscaler's prompt (a StableDiffusionUpscalePipeline folder: Stability's
    upscale/creative and conservative), with `negative_text`, `seed` (its
    torch.Generator's) and `params`: {"num_inference_steps": int, "guidance_scale":
    float, "noise_level": int in [0, the pipeline's max_noise_level]} (missing keys: the
    pipeline's defaults). An ESRGAN-class upscaler and the other kinds ignore those
    three. A task with `params` runs alone (one pipeline call per task). `should_stop`
    as on GenerationTask (asked before the model's call, and after each denoising step
    of a diffusion upscaler)."""

    source: PipelineSource
    kind: str
    image: Image.Image  # RGB
    text: str = ""
    should_stop: Callable[[], str | None] | None = None
    negative_text: str = ""
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolResult:
    """What a tool model made of one task: `image` (upscale: RGB, `scale` x the input;
    remove_bg: RGBA of the input's size; segment and depth: L of the input's size;
    describe: None) and `text` (describe: the caption; else ""). `stopped` as on GenerationResult."""

    image: Image.Image | None
    text: str = ""
    seconds: float = 0.0  # this task's share of the model call(s)
    stopped: str | None = None


class PipelineError(Exception):
    """A load or generation failure; the message is short and meant for humans."""


class Backend(Protocol):
    """What the worker needs from whatever runs the models. Implementations are
    thread-safe: one worker process calls them from many threads at once."""

    def run(self, task: GenerationTask, *, max_batch: int | None = None, window_ms: float = 0.0) -> GenerationResult:
        """Run one task, maybe batched with other threads' compatible tasks (waiting up
        to `window_ms` for company; at most `max_batch` images per call, None: the
        backend's default). Raises PipelineError when the task cannot be run; a task
        stopped by its should_stop returns normally with `stopped` set."""
        ...

    def run_tool(self, task: ToolTask, *, max_batch: int | None = None, window_ms: float = 0.0) -> ToolResult:
        """Run one tool task (issue 26 item 1), batched with other threads' tasks for the
        same model where that is safe (same kind and source; an upscaler also needs the
        same input size; a task with `params`, a diffusion upscaler's, runs alone),
        waiting up to `window_ms` for company. Raises PipelineError
        when the model cannot be loaded or run."""
        ...

    def count_tokens(self, source: PipelineSource, text: str) -> int | None:
        """Tokens the model's (first) tokenizer makes of `text`, untruncated; None when
        it has none or counting failed (counting never fails a generation)."""
        ...

    def capabilities(self, source: PipelineSource) -> dict[str, Any]:
        """What the model's family can do (images.families_catalog.capabilities_of), from
        its model_index.json, without loading it; {} when the family is unknown."""
        ...

    def warm_up(self, source: PipelineSource) -> None:
        """Load the model and run one tiny generation, so the first request doesn't pay."""
        ...

    def device_info(self) -> dict[str, Any]:
        """What the backend runs on, for logs and benchmarks: at least "device"."""
        ...

    def classify(self, images: list[Image.Image]) -> list[dict[str, float]]:
        """Score images with the output classifier (issue 25), in one batch on the
        pipeline's device: one {label: probability} dict per image, in order. Raises
        PipelineError when none is configured or it fails."""
        ...

    def watermark(self, image: Image.Image) -> Image.Image:
        """The image with the invisible provenance watermark (or unchanged: off, or
        smaller than 256x256)."""
        ...

    def sign(self, data: bytes, *, content_type: str, model: str, generated_at: Any) -> bytes:
        """Encoded image bytes with a signed C2PA manifest embedded (or unchanged when no
        certificate is configured). Raises PipelineError when signing fails."""
        ...


def error_summary(exc: BaseException, limit: int = 200) -> str:
    """A one-line description of an exception, with no traceback: "Type: first line"."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def effective_steps(task: GenerationTask) -> int:
    """How many denoising steps the task's pipeline call actually runs: `steps` for
    text-to-image; max(1, min(int(steps * strength), steps)) for img2img/inpaint
    (diffusers' count, but at least one step: see runner.pipeline_strength). on_step
    totals and preview_steps count in these steps."""
    if task.init_image is None:
        return task.steps
    return max(1, min(int(task.steps * task.strength), task.steps))


def preview_steps_for(total_steps: int, count: int) -> tuple[int, ...]:
    """`count` step numbers spread evenly over 1..total_steps-1 (never the last step,
    whose result is the final image): e.g. (4, 2) -> (1, 3), (20, 3) -> (5, 10, 15),
    (30, 1) -> (15,). When fewer than `count` steps come before the last one, all of
    them: (3, 3) -> (1, 2); (1, n) -> (). For img2img/inpaint pass effective_steps(task).
    Raises ValueError for a negative or non-integer argument.
    """
    for name, value in (("total_steps", total_steps), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer (got {value!r})")
    before_last = max(0, total_steps - 1)
    if before_last <= count:
        return tuple(range(1, before_last + 1))
    # Steps total*(i+1)/(count+1), rounded half up: more than one step apart, so unique.
    return tuple(
        min(before_last, max(1, (2 * total_steps * (i + 1) + count + 1) // (2 * (count + 1)))) for i in range(count)
    )
