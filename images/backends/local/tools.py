"""Tool models on the local backend (issue 26 item 1): upscalers, background removers,
text-prompted segmenters and captioners, each loaded from a local folder (or file) with
`local_files_only` (no hub downloads unless the operator allows them), cached per
process, run on the pipeline lanes and batched across requests where that is safe.

Loaders, by the model row's kind (docs/models.md names real checkpoints for each):

- upscaler: an ESRGAN-class weight file (`.pth`, `.safetensors`...) loaded with spandrel
  (`ModelLoader().load_from_file`), which recognises the architecture from its keys
  (ESRGAN/RealESRGAN RRDB, SwinIR, HAT, ...). The output is `scale` times the input.
  Or a diffusers folder whose model_index.json `_class_name` is
  StableDiffusionUpscalePipeline (stabilityai/stable-diffusion-x4-upscaler), loaded with
  `from_pretrained` (no safety checker or watermarker) and run with the task's prompt,
  negative prompt, seed and params (ToolTask). Its latents have the input's size and its
  VAE decodes them `vae_scale_factor` (4) times larger; the input is padded (edges
  repeated) to a multiple of what the VAE's image processor and the UNet need, and the
  output cropped back, so the output is exactly 4x the input at any size.
- background_remover: a transformers semantic-segmentation model
  (AutoModelForSemanticSegmentation, e.g. SegFormer) and its image processor. The alpha
  is 1 - P(background label) at the input's size, min-max normalised per image as BRIA's
  RMBG-1.4 post-processing does (`postprocess_image`: (x - min) / (max - min)).
- segmenter: CLIPSeg (CLIPSegForImageSegmentation, CLIPSegProcessor): sigmoid(logits)
  for the text, at the input's size.
- captioner: transformers image-to-text: a VisionEncoderDecoder (ViT-GPT2 style) or
  BLIP (BlipForConditionalGeneration) by the folder's config.json `model_type`.
- depth_estimator: transformers AutoModelForDepthEstimation (DPT, Depth Anything) and
  its image processor: `predicted_depth` at the input's size, min-max normalised per
  image to 0-255 (light = near, as the MiDaS maps ControlNet's depth models read).

Batching: tasks of the same kind and model wait together up to the worker's window
(BATCH_WINDOW_MS) and run as one call when the batch is full or the window ends (the
window is an upper bound, never a sleep); an ESRGAN upscaler batches only inputs of
one size (no padding, so each output is exactly what it would be alone); a diffusion
upscaler runs each task alone (its prompt, seed and settings are per task); a depth
estimator batches only inputs of one size (a processor that keeps the aspect ratio
makes tensors of different shapes).
The other kinds' image processors resize every input to one size, so they batch any sizes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForDepthEstimation,
    AutoModelForSemanticSegmentation,
    AutoTokenizer,
    BlipForConditionalGeneration,
    BlipProcessor,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    VisionEncoderDecoderModel,
)
from transformers.utils import logging as transformers_logging

from images.backends.base import (
    TOOL_DEPTH,
    TOOL_DESCRIBE,
    TOOL_REMOVE_BACKGROUND,
    TOOL_SEGMENT,
    TOOL_UPSCALE,
    PipelineError,
    PipelineSource,
    ToolResult,
    ToolTask,
    error_summary,
)
from images.backends.local import device, lanes

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
# Images per call when the worker gives no max_batch (the model row's `max_batch`).
DEFAULT_MAX_BATCH = {"cpu": 4, "cuda": 8, "mps": 4}
# A caption's length, when the model's generation config does not set one.
CAPTION_MAX_TOKENS = 30

_spandrel_lock = threading.Lock()
_spandrel: Any = None


def spandrel_import() -> Any:
    """The spandrel package, imported once (it takes seconds: every architecture it knows
    is imported, so only the first upscaler job pays, under this lock).

    spandrel imports torchvision at import time for two architectures this platform does
    not serve (LaMa's `rotate`, RestoreFormer's `normalize`). requirements/worker.txt
    leaves torchvision out (images.backends.local's note), so when it is not installed
    those names are bound to placeholders that raise if called, for the length of the
    import only (the placeholder modules are removed from sys.modules again: nothing
    else sees a `torchvision`). Where torchvision is installed it is used as is."""
    global _spandrel
    with _spandrel_lock:
        if _spandrel is not None:
            return _spandrel
        try:
            import torchvision  # noqa: F401

            has_torchvision = True
        except ImportError:
            has_torchvision = False
        if has_torchvision:
            import spandrel
        else:
            names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
            saved = {name: sys.modules.get(name) for name in names}
            placeholders = {name: types.ModuleType(name) for name in names}

            def unavailable(*args: Any, **kwargs: Any) -> Any:
                raise PipelineError("this spandrel architecture needs torchvision, which is not installed")

            functional = placeholders["torchvision.transforms.functional"]
            functional.rotate = functional.normalize = unavailable
            functional.InterpolationMode = type("InterpolationMode", (), {})
            placeholders["torchvision"].transforms = placeholders["torchvision.transforms"]
            placeholders["torchvision.transforms"].functional = functional
            sys.modules.update(placeholders)
            try:
                import spandrel
            finally:
                for name, module in saved.items():
                    if module is None:
                        sys.modules.pop(name, None)
                    else:
                        sys.modules[name] = module
        _spandrel = spandrel
        return spandrel


# ---- loading ---------------------------------------------------------------------------------


@dataclass
class _Loaded:
    kind: str
    model: Any
    processor: Any = None
    tokenizer: Any = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    scale: int = 1  # an upscaler's factor
    background_label: int = 0  # a background remover's label for "background"
    family: str = ""  # a captioner's model_type; SD_UPSCALE_CLASS for a diffusion upscaler


_cache: dict[tuple, _Loaded] = {}
_cache_lock = threading.Lock()


def _location(source: PipelineSource) -> str:
    return os.path.expanduser(source.source)


def _weight_file(location: str) -> str:
    """A file, or the one weight file of a folder (spandrel loads single files)."""
    path = Path(location)
    if path.is_file():
        return str(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(files) == 1:
            return str(files[0])
        raise PipelineError(
            f"{location}: an upscaler folder must hold exactly one weight file "
            f"({', '.join(WEIGHT_SUFFIXES)}); found {len(files)}"
        )
    raise PipelineError(f"{location}: no such file or folder")


# model_index.json `_class_name` of a diffusion upscaler folder (images.tool_models has the same).
SD_UPSCALE_CLASS = "StableDiffusionUpscalePipeline"


def _pipeline_class(location: str) -> str:
    """The `_class_name` of a diffusers folder's model_index.json; "" for anything else."""
    try:
        index = json.loads((Path(location) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(index.get("_class_name", "")) if isinstance(index, dict) else ""


def _load(kind: str, source: PipelineSource) -> _Loaded:
    transformers_logging.disable_progress_bar()  # (no "Loading weights" bars on stderr, as cache.py)
    where, default_dtype = device.select_device()
    # Tools run in float32 unless the row asks otherwise: their cost is small beside a
    # generator's, and half precision changes an upscaler's colours measurably.
    dtype = device.resolve_dtype(source.dtype, torch.float32 if source.dtype == "auto" else default_dtype)
    location = _location(source)
    local_only = source.local_files_only
    if kind == TOOL_UPSCALE and _pipeline_class(location) == SD_UPSCALE_CLASS:
        from diffusers import StableDiffusionUpscalePipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        pipe = StableDiffusionUpscalePipeline.from_pretrained(
            location, local_files_only=local_only, torch_dtype=dtype, safety_checker=None, watermarker=None
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.to(where)
        return _Loaded(kind, pipe, device=where, dtype=dtype, scale=int(pipe.vae_scale_factor), family=SD_UPSCALE_CLASS)
    if kind == TOOL_UPSCALE:
        descriptor = spandrel_import().ModelLoader(device=where).load_from_file(_weight_file(location))
        if not hasattr(descriptor, "scale") or descriptor.input_channels != 3:
            raise PipelineError(f"{location} is not an RGB image-to-image model spandrel can run")
        if dtype == torch.float16 and not descriptor.supports_half:
            dtype = torch.float32
        descriptor.to(dtype)
        descriptor.eval()
        return _Loaded(kind, descriptor, device=where, dtype=dtype, scale=int(descriptor.scale))
    if kind == TOOL_REMOVE_BACKGROUND:
        model = AutoModelForSemanticSegmentation.from_pretrained(location, local_files_only=local_only)
        processor = AutoImageProcessor.from_pretrained(location, local_files_only=local_only)
        labels = {str(name).lower(): int(i) for i, name in (model.config.id2label or {}).items()}
        background = next((labels[n] for n in ("background", "bg", "__background__") if n in labels), 0)
        return _Loaded(
            kind, model.to(where, dtype).eval(), processor, device=where, dtype=dtype, background_label=background
        )
    if kind == TOOL_SEGMENT:
        model = CLIPSegForImageSegmentation.from_pretrained(location, local_files_only=local_only)
        processor = CLIPSegProcessor.from_pretrained(location, local_files_only=local_only)
        return _Loaded(kind, model.to(where, dtype).eval(), processor, device=where, dtype=dtype)
    if kind == TOOL_DEPTH:
        model = AutoModelForDepthEstimation.from_pretrained(location, local_files_only=local_only)
        processor = AutoImageProcessor.from_pretrained(location, local_files_only=local_only)
        return _Loaded(kind, model.to(where, dtype).eval(), processor, device=where, dtype=dtype)
    if kind == TOOL_DESCRIBE:
        try:
            config = json.loads((Path(location) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        family = config.get("model_type", "")
        if family == "blip":
            model = BlipForConditionalGeneration.from_pretrained(location, local_files_only=local_only)
            processor = BlipProcessor.from_pretrained(location, local_files_only=local_only)
            tokenizer = processor.tokenizer
        elif family == "vision-encoder-decoder":
            model = VisionEncoderDecoderModel.from_pretrained(location, local_files_only=local_only)
            processor = AutoImageProcessor.from_pretrained(location, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        else:
            raise PipelineError(
                f"{location}: captioners are BLIP or VisionEncoderDecoder checkpoints (config.json "
                f"model_type 'blip' or 'vision-encoder-decoder'), not {family or 'unknown'!r}"
            )
        return _Loaded(kind, model.to(where, dtype).eval(), processor, tokenizer, where, dtype, family=family)
    raise PipelineError(f"unknown tool kind {kind!r}")


def tool_model(kind: str, source: PipelineSource) -> _Loaded:
    """The loaded model for `kind` at `source`, cached per process (one copy for every
    lane: tool models are small and their calls do not keep state)."""
    key = (kind, source.source, source.dtype, source.local_files_only)
    with _cache_lock:
        loaded = _cache.get(key)
        if loaded is None:
            started = time.monotonic()
            try:
                loaded = _load(kind, source)
            except PipelineError:
                raise
            except Exception as exc:
                raise PipelineError(f"loading the {kind} model failed: {error_summary(exc)}") from exc
            _cache[key] = loaded
            logger.info("loaded %s model %s in %.1fs", kind, source.source, time.monotonic() - started)
        return loaded


# ---- running one batch -----------------------------------------------------------------------


def _to_tensor(images: list[Image.Image], loaded: _Loaded) -> torch.Tensor:
    import numpy as np

    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).to(loaded.device, loaded.dtype)


def _to_images(batch: torch.Tensor, mode: str) -> list[Image.Image]:
    """(B, C, H, W) or (B, H, W) floats in 0..1 -> PIL images of `mode` (RGB or L)."""
    values = (batch.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if values.ndim == 4:
        values = values.permute(0, 2, 3, 1)
    images = [Image.fromarray(v.numpy()) for v in values]
    return [image if image.mode == mode else image.convert(mode) for image in images]


def _resize_maps(maps: torch.Tensor, images: list[Image.Image]) -> list[torch.Tensor]:
    """(B, C, h, w) -> one (C, H, W) map per input at its own size (bilinear)."""
    return [
        torch.nn.functional.interpolate(
            maps[i : i + 1].float(), size=(image.height, image.width), mode="bilinear", align_corners=False
        )[0]
        for i, image in enumerate(images)
    ]


class _Stopped(Exception):
    """A diffusion upscaler's task asked to stop between two denoising steps."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _sd_upscale(loaded: _Loaded, task: ToolTask) -> ToolResult:
    """One task through a StableDiffusionUpscalePipeline (module docstring): the prompt,
    negative prompt, a CPU torch.Generator seeded with `task.seed`, and `task.params`;
    the output exactly `loaded.scale` times the input (padded, run, cropped). Raises
    PipelineError for a noise_level outside [0, max_noise_level] or steps < 1; a
    should_stop that answers between two steps ends it with `stopped` set."""
    import numpy as np

    pipe = loaded.model
    params = task.params
    steps = int(params.get("num_inference_steps", 75))  # (the pipeline's defaults)
    guidance = float(params.get("guidance_scale", 9.0))
    noise_level = int(params.get("noise_level", 20))
    if not 0 <= noise_level <= pipe.config.max_noise_level:
        raise PipelineError(f"noise_level {noise_level} is outside 0-{pipe.config.max_noise_level}")
    if steps < 1:
        raise PipelineError(f"num_inference_steps must be at least 1, not {steps}")
    image = task.image.convert("RGB")
    width, height = image.size
    # The image processor rounds sizes down to a multiple of the VAE's factor; the UNet
    # halves the latents once per down block after the first: pad to both (powers of 2).
    multiple = max(int(pipe.vae_scale_factor), 2 ** (len(pipe.unet.config.block_out_channels) - 1))
    pad_w, pad_h = -width % multiple, -height % multiple
    if pad_w or pad_h:
        image = Image.fromarray(np.pad(np.asarray(image), ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))

    def on_step(step: int, timestep: Any, latents: Any) -> None:
        reason = _stop_reason(task)
        if reason:
            raise _Stopped(reason)

    try:
        output = pipe(
            prompt=task.text or "",
            image=image,
            negative_prompt=task.negative_text or None,
            num_inference_steps=steps,
            guidance_scale=guidance,
            noise_level=noise_level,
            generator=torch.Generator(device="cpu").manual_seed(int(task.seed)),
            callback=on_step if task.should_stop is not None else None,
            callback_steps=1,
        ).images[0]
    except _Stopped as stop:
        return ToolResult(image=None, stopped=stop.reason)
    scale = loaded.scale
    if output.size != (image.width * scale, image.height * scale):
        raise PipelineError(f"the upscaler made {output.size[0]}x{output.size[1]} of {image.width}x{image.height}")
    return ToolResult(image=output.crop((0, 0, width * scale, height * scale)).convert("RGB"))


def _run(loaded: _Loaded, tasks: list[ToolTask]) -> list[ToolResult]:
    if loaded.family == SD_UPSCALE_CLASS:  # (each task alone: its own prompt, seed and settings)
        return [_sd_upscale(loaded, task) for task in tasks]
    images = [task.image.convert("RGB") for task in tasks]
    with torch.inference_mode():
        if loaded.kind == TOOL_UPSCALE:
            output = loaded.model(_to_tensor(images, loaded))
            return [ToolResult(image=image) for image in _to_images(output, "RGB")]
        if loaded.kind == TOOL_REMOVE_BACKGROUND:
            inputs = loaded.processor(images=images, return_tensors="pt").to(loaded.device)
            logits = loaded.model(pixel_values=inputs["pixel_values"].to(loaded.dtype)).logits
            results = []
            for image, logit in zip(images, _resize_maps(logits, images), strict=True):
                foreground = 1 - logit.softmax(dim=0)[loaded.background_label]
                low, high = foreground.min(), foreground.max()
                alpha = (foreground - low) / (high - low) if high > low else torch.ones_like(foreground)
                cut = image.convert("RGBA")
                cut.putalpha(_to_images(alpha[None], "L")[0])
                results.append(ToolResult(image=cut))
            return results
        if loaded.kind == TOOL_SEGMENT:
            inputs = loaded.processor(
                # (CLIP's text encoder reads at most 77 tokens: a longer text is cut there)
                text=[task.text for task in tasks],
                images=images,
                padding=True,
                truncation=True,
                return_tensors="pt",
            ).to(loaded.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
            logits = loaded.model(**inputs).logits
            if logits.ndim == 2:  # (CLIPSeg squeezes a batch of one)
                logits = logits[None]
            maps = _resize_maps(logits[:, None].sigmoid(), images)
            return [ToolResult(image=_to_images(m, "L")[0]) for m in maps]
        if loaded.kind == TOOL_DEPTH:
            inputs = loaded.processor(images=images, return_tensors="pt").to(loaded.device)
            depth = loaded.model(pixel_values=inputs["pixel_values"].to(loaded.dtype)).predicted_depth
            results = []
            for one in _resize_maps(depth[:, None], images):
                low, high = one.min(), one.max()  # per image, as ControlNet's depth annotators
                normalised = (one - low) / (high - low) if high > low else torch.zeros_like(one)
                results.append(ToolResult(image=_to_images(normalised, "L")[0]))
            return results
        if loaded.kind == TOOL_DESCRIBE:
            processor = loaded.processor
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(loaded.device, loaded.dtype)
            generation = loaded.model.generation_config
            limit = {} if generation.max_new_tokens or generation.max_length != 20 else {"max_new_tokens": 30}
            tokens = loaded.model.generate(pixel_values=pixel_values, **limit)
            texts = [" ".join(text.split()) for text in loaded.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
            if not all(texts):
                raise PipelineError("the captioner produced no text")
            return [ToolResult(image=None, text=text) for text in texts]
    raise PipelineError(f"unknown tool kind {loaded.kind!r}")


def _run_batch(tasks: list[ToolTask]) -> list[ToolResult]:
    """On a lane: one call for the tasks that have not asked to stop."""
    results: list[ToolResult | None] = [None] * len(tasks)
    live = []
    for i, task in enumerate(tasks):
        reason = _stop_reason(task)
        if reason:
            results[i] = ToolResult(image=None, stopped=reason)
        else:
            live.append(i)
    if live:
        loaded = tool_model(tasks[live[0]].kind, tasks[live[0]].source)
        started = time.monotonic()
        with lanes.run_lock(lanes.current_lane()):
            try:
                made = _run(loaded, [tasks[i] for i in live])
            except PipelineError:
                raise
            except torch.OutOfMemoryError as exc:
                device.free_memory()
                raise PipelineError(f"out of memory running the {loaded.kind} model") from exc
            except Exception as exc:
                raise PipelineError(f"the {loaded.kind} model failed: {error_summary(exc)}") from exc
        share = (time.monotonic() - started) / len(live)
        for i, result in zip(live, made, strict=True):
            result.seconds = share
            results[i] = result
    return results  # type: ignore[return-value]


def _stop_reason(task: ToolTask) -> str | None:
    if task.should_stop is None:
        return None
    try:
        return task.should_stop() or None
    except Exception:
        logger.warning("should_stop raised; carrying on", exc_info=True)
        return None


# ---- batching across requests ----------------------------------------------------------------


@dataclass
class _Batch:
    tasks: list[ToolTask] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    results: list[ToolResult] | None = None
    error: BaseException | None = None


class ToolBatcher:
    """Groups tool tasks of different threads into calls (module docstring): the first
    task of a key opens a batch and leads it; the batch runs when it is full (at once)
    or when the leader's window ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple, _Batch] = {}

    @staticmethod
    def _key(task: ToolTask) -> tuple:
        # An upscaler's output, and a depth processor that keeps the aspect ratio (Depth
        # Anything's), follow the input's size: only inputs of one size share a call.
        size = task.image.size if task.kind in (TOOL_UPSCALE, TOOL_DEPTH) else None
        if task.params:  # (a diffusion upscaler's task: alone, ToolTask)
            return (task.kind, task.source, size, id(task))
        return (task.kind, task.source, size)

    def run(self, task: ToolTask, *, max_batch: int | None = None, window_ms: float = 0.0) -> ToolResult:
        if task.kind not in (TOOL_UPSCALE, TOOL_REMOVE_BACKGROUND, TOOL_SEGMENT, TOOL_DESCRIBE, TOOL_DEPTH):
            raise PipelineError(f"unknown tool kind {task.kind!r}")
        if max_batch is None:
            max_batch = DEFAULT_MAX_BATCH.get(device.select_device()[0].split(":")[0], 1)
        max_batch = max(1, max_batch)
        key = self._key(task)
        with self._lock:
            batch = self._open.get(key)
            leader = batch is None
            if leader:
                batch = _Batch()
                self._open[key] = batch
            index = len(batch.tasks)
            batch.tasks.append(task)
            if len(batch.tasks) >= max_batch:
                self._open.pop(key, None)
                batch.full.set()
        if leader:
            if window_ms > 0 and max_batch > 1:
                batch.full.wait(window_ms / 1000)
            with self._lock:
                if self._open.get(key) is batch:
                    del self._open[key]
            try:
                batch.results = lanes.gpu_call(_run_batch, batch.tasks)
            except BaseException as exc:
                batch.error = exc
            finally:
                batch.done.set()
        else:
            batch.done.wait()
        if batch.error is not None:
            if isinstance(batch.error, PipelineError):
                raise PipelineError(str(batch.error))
            raise PipelineError(error_summary(batch.error))
        return batch.results[index]


batcher = ToolBatcher()
