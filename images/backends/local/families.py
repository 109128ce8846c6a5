"""Per-architecture differences: one `Family` per family of diffusers pipelines.

What a family *is* (guidance mode, negative prompts, edit modes, size rule, preferred
CUDA dtype, denoiser, latent layout, batch isolation) is data, in the torch-free
`images.families_catalog` (the web tier and `manage.py model_add` read the same
records). This module turns those records into behaviour: how a model is loaded and
prepared, how the image-to-image / inpainting / reference-edit and per-lane pipelines
are made from it, which arguments one pipeline call takes, which tasks may share a call,
and how intermediate latents become a preview. The rest of the backend asks
`family_of(pipe)` (or `family_for(class_name)`, `family_for_source(source)` before
loading) and never looks at the architecture itself.

Call arguments are read from the pipeline's own `__call__` signature: an argument the
pipeline does not take is never passed (FLUX.2 has no `negative_prompt`), and a prompt
left out keeps the pipeline's default (PixArt-Σ and Sana default to "", SDXL to None).

The registry is keyed by the diffusers pipeline class name (`model_index.json`'s
`_class_name`, `type(pipe).__name__`); names no family claims get `DEFAULT`, the
SD-style UNet behaviour with diffusers' Auto* classes.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import diffusers
import torch

# Resolved now (diffusers' lazy module imports on first attribute access: see the
# package docstring), not on a lane.
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)
from PIL import Image as PILImage

from images.backends.base import GenerationTask, PipelineError, PipelineSource
from images.backends.local import native, previews
from images.families_catalog import CFG, DISTILLED, FAMILIES, KLEIN_PIPELINES, NO_GUIDANCE, TRUE_CFG, FamilySpec

if TYPE_CHECKING:
    from PIL import Image

    from images.backends.local.config import LocalConfig

logger = logging.getLogger(__name__)

StepCallback = Callable[[Any, int, Any, dict], dict]  # diffusers' callback_on_step_end


@functools.lru_cache(maxsize=64)
def _call_parameters(pipeline_class: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipeline_class.__call__).parameters)


def call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    """The named arguments the pipeline's __call__ accepts (with their defaults)."""
    return _call_parameters(type(pipe))


def assemble(pipeline_class: type, base: Any, **overrides: Any) -> Any:
    """A `pipeline_class` over `base`'s components (no copies, no dtype cast: diffusers'
    from_pipe casts the shared modules to float32 unless told otherwise), with
    `overrides` replacing some (a lane's own scheduler and tokenizers)."""
    components = dict(base.components)
    config = dict(base.config)
    kwargs: dict[str, Any] = {}
    for name, parameter in inspect.signature(pipeline_class.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        if name in overrides:
            kwargs[name] = overrides[name]
        elif name in components:
            kwargs[name] = components[name]
        elif name in config and not name.startswith("_"):
            kwargs[name] = config[name]
        elif parameter.default is inspect.Parameter.empty:
            raise PipelineError(f"{pipeline_class.__name__} needs a {name!r} the model does not have")
    pipe = pipeline_class(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Family:
    """A family's behaviour over its catalog record. `Family()` (no record) is the
    generic SD-style UNet behaviour used for pipeline classes no record names."""

    def __init__(self, spec: FamilySpec | None = None) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else "unet"

    @property
    def denoiser(self) -> str:
        return self.spec.denoiser if self.spec else "unet"

    @property
    def cuda_dtype(self) -> str:
        return self.spec.cuda_dtype if self.spec else "float16"

    # -- loading ---------------------------------------------------------------------

    def load_kwargs(self, model_config: dict[str, Any]) -> dict[str, Any]:
        """Extra from_pretrained arguments, given the folder's model_index.json."""
        if "safety_checker" in model_config:  # SD 1.x/2.x; other pipelines would warn about the kwargs
            return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        return {}

    def load(self, location: str, model_config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """The text-to-image pipeline of the folder or hub id `location`: the family's
        own class when the folder names it (HiDream is not in diffusers' auto mapping),
        else diffusers' auto mapping, else whatever class the folder names."""
        class_name = (model_config or {}).get("_class_name")
        own = getattr(diffusers, class_name, None) if self.spec and class_name in self.spec.pipelines else None
        if own is not None:
            return own.from_pretrained(location, **kwargs)
        try:
            return AutoPipelineForText2Image.from_pretrained(location, **kwargs)
        except ValueError:  # "AutoPipeline can't find a pipeline linked to ..."
            return DiffusionPipeline.from_pretrained(location, **kwargs)

    def prepare(self, pipe: Any, *, device: str, settings: LocalConfig) -> None:
        """Tune a freshly loaded pipeline (on its device) for serving: compile and the
        memory format apply to the family's denoiser (the UNet or the transformer)."""
        pipe.set_progress_bar_config(disable=True)
        denoiser = getattr(pipe, self.denoiser, None)
        if device.startswith("cuda") and denoiser is not None and self.denoiser == "unet":
            # channels-last helps convolutions; a transformer's linear layers gain nothing.
            denoiser.to(memory_format=torch.channels_last)
        if settings.compile and denoiser is not None:
            # Compiled lazily, on the first call at each shape: warm_up makes those calls at
            # start for warmup_sizes. Lanes share the pipeline's modules, so they share this.
            setattr(
                pipe,
                self.denoiser,
                torch.compile(denoiser, mode=settings.compile_mode, backend=settings.compile_backend),
            )
        vae = getattr(pipe, "vae", None)
        if vae is not None and settings.vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()  # lower peak memory for large images; changes pixels slightly

    # -- derived pipelines -------------------------------------------------------------

    def mode_for(self, kind: str) -> str:
        """The pipeline mode serving a task kind: text2img, img2img, inpaint or, for
        families whose edits are reference edits (Kontext, FLUX.2), reference. Raises
        PipelineError when the family has none."""
        if kind == "text2img" or self.spec is None:
            return kind
        modes = self.spec.edit_modes
        if kind == "inpaint" and "inpaint" in modes:
            return "inpaint"
        if kind == "img2img":
            for mode in ("img2img", "reference"):
                if mode in modes:
                    return mode
        label = "inpainting" if kind == "inpaint" else "image-to-image"
        raise PipelineError(f"the {self.spec.title} family does not support {label}")

    def derive(self, base: Any, mode: str) -> Any:
        """The img2img/inpaint/reference pipeline sharing base's components (no extra
        weights). Raises whatever diffusers raises when the architecture has none."""
        if mode == "reference":
            return base  # the text-to-image pipeline itself, given `image=`
        class_name = self.spec.pipeline_for(mode) if self.spec else None
        if class_name:
            return assemble(getattr(diffusers, class_name), base)
        auto = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
        # Unlike DiffusionPipeline.from_pipe the Auto* classes do not cast the shared modules.
        pipe = auto.from_pipe(base)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def lane_clone(self, base: Any) -> Any:
        """A text-to-image pipeline sharing base's modules, with its own scheduler and
        tokenizers/processors (both keep per-call state), for another lane."""
        overrides: dict[str, Any] = {"scheduler": base.scheduler.__class__.from_config(base.scheduler.config)}
        for name, component in base.components.items():
            if component is not None and (name.startswith("tokenizer") or name == "processor"):
                overrides[name] = copy.deepcopy(component)
        return assemble(type(base), base, **overrides)

    # -- one call ----------------------------------------------------------------------

    def batch_key(self, task: GenerationTask) -> tuple:
        """What tasks must share, besides source, size, steps and guidance, to run in one
        call without changing each other's images (catalog `batch_isolation`)."""
        # An architecture no record describes: only identical prompts share a call.
        isolation = self.spec.batch_isolation if self.spec else ("negative_presence", "prompt")
        key: tuple = ()
        if "negative_presence" in isolation:
            key += (task.negative_prompt is not None,)
        if "prompt" in isolation:
            key += (task.prompt, task.negative_prompt)
        return key

    def call_kwargs(
        self,
        pipe: Any,
        mode: str,
        tasks: list[GenerationTask],
        rows: list[int],
        *,
        strength: float,
        generators: list[Any],
        on_step_end: StepCallback,
    ) -> dict[str, Any]:
        """The arguments of one pipeline call over `rows` (task index per image), only
        those the pipeline's signature accepts."""
        params = call_parameters(pipe)
        first = tasks[rows[0]]
        guidance = float(first.guidance)
        kwargs: dict[str, Any] = {
            "prompt": [tasks[t].prompt for t in rows],
            "num_inference_steps": first.steps,
            "num_images_per_prompt": 1,
            "generator": generators,
            "output_type": "pil",
            "width": first.width,
            "height": first.height,
        }
        mode_of_guidance = self.guidance_mode(pipe)
        if mode_of_guidance in (CFG, DISTILLED):
            kwargs["guidance_scale"] = guidance
        elif mode_of_guidance == TRUE_CFG:
            kwargs["true_cfg_scale"] = guidance
        # NO_GUIDANCE: the pipeline's default (distilled models ignore it anyway).
        kwargs.update(self._negative_kwargs(params, [tasks[t].negative_prompt for t in rows], guidance))
        if "clean_caption" in params:
            kwargs["clean_caption"] = False  # needs bs4/ftfy, and rewrites what the customer sent
        if self.spec is not None and self.spec.fixed_area and hasattr(pipe, "default_sample_size"):
            # HiDream scales every request to the area (default_sample_size * VAE factor)^2 and
            # rounds each side down to its multiple: this lane's pipeline (one call at a time)
            # is given the requested area, a hair above so that the rounding keeps each side.
            pipe.default_sample_size = math.sqrt(first.width * first.height) * (1 + 1e-6) / pipe.vae_scale_factor
        if "_auto_resize" in params:  # Kontext: render at the size asked, not a preferred one
            kwargs["_auto_resize"] = False
            kwargs["max_area"] = first.width * first.height
        size = native.native_size(pipe)
        if size is not None:  # drawn at its native size, fitted to the request in finish()
            kwargs["width"] = kwargs["height"] = size
        kwargs.update(self._image_kwargs(mode, first, len(rows), strength, size))
        kwargs.update(self._control_kwargs(params, first, len(rows), size))
        if "callback_on_step_end" in params:
            kwargs["callback_on_step_end"] = on_step_end
        elif "callback" in params:  # the legacy callback(step, timestep, latents) (PixArt)
            kwargs["callback"] = lambda step, timestep, latents: on_step_end(pipe, step, timestep, {"latents": latents})
            kwargs["callback_steps"] = 1
        return {name: value for name, value in kwargs.items() if name in params}

    def guidance_mode(self, pipe: Any) -> str:
        """How this checkpoint uses the guidance value (families_catalog.folder_variant_guidance
        says the same from the folder): step-distilled checkpoints ignore it (FLUX.1-schnell,
        FLUX.2-klein), FLUX.2-klein's undistilled base uses it as a CFG scale."""
        mode = self.spec.guidance if self.spec else CFG
        if mode != DISTILLED:
            return mode
        if getattr(pipe, "config", {}).get("is_distilled"):
            return NO_GUIDANCE
        if type(pipe).__name__ in KLEIN_PIPELINES:
            return CFG
        return DISTILLED if self._has_guidance(pipe) else NO_GUIDANCE

    @staticmethod
    def _has_guidance(pipe: Any) -> bool:
        """Whether this checkpoint uses guidance at all (families_catalog.folder_variant_guidance)."""
        if getattr(pipe, "config", {}).get("is_distilled"):
            return False
        transformer = getattr(pipe, "transformer", None)
        return bool(getattr(getattr(transformer, "config", None), "guidance_embeds", True))

    def _negative_kwargs(
        self, params: dict[str, inspect.Parameter], negatives: list[str | None], guidance: float
    ) -> dict[str, Any]:
        if "negative_prompt" not in params or (self.spec is not None and not self.spec.negative_prompt):
            return {}
        default = params["negative_prompt"].default
        fill = default if isinstance(default, str) else ""
        true_cfg = self.spec is not None and self.spec.guidance == TRUE_CFG and guidance > 1
        if true_cfg and not fill.strip():
            fill = " "  # Qwen-Image applies true CFG only when a negative prompt is given
        if not true_cfg and all(n is None for n in negatives):
            return {}  # the pipeline's own default (None for SDXL, "" for PixArt-Σ and Sana)
        return {"negative_prompt": [fill if n is None else n for n in negatives]}

    @staticmethod
    def _image_kwargs(
        mode: str, first: GenerationTask, size: int, strength: float, native_size: int | None = None
    ) -> dict[str, Any]:
        if mode == "text2img":
            return {}
        init = first.init_image if first.init_image.mode == "RGB" else first.init_image.convert("RGB")
        if native_size is not None:
            init = native.to_native(init, native_size)
        if mode == "reference":
            return {"image": init}
        # One copy per image: with a list of generators diffusers encodes each copy with
        # its own generator, so an image depends only on its seed.
        kwargs: dict[str, Any] = {"image": [init] * size, "strength": strength}
        if mode == "inpaint":
            mask = first.mask_image if first.mask_image.mode == "L" else first.mask_image.convert("L")
            if native_size is not None:
                mask = native.to_native(mask, native_size)
            kwargs["mask_image"] = [mask] * size
        return kwargs

    @staticmethod
    def _control_kwargs(
        params: dict[str, inspect.Parameter], first: GenerationTask, size: int, native_size: int | None
    ) -> dict[str, Any]:
        """A ControlNet's control image (one copy per image; a native-size model gets its
        centred square at that size, as an edit's input) and scale, and an IP-Adapter's
        reference image. Raises PipelineError when the pipeline takes neither argument
        (never a silent plain generation)."""
        kwargs: dict[str, Any] = {}
        if first.control is not None:
            control = first.control.image if first.control.image.mode == "RGB" else first.control.image.convert("RGB")
            if native_size is not None:
                control = native.to_native(control, native_size)
            kwargs["image"] = [control] * size
            kwargs["controlnet_conditioning_scale"] = float(first.control.scale)
        if first.ip_adapter is not None:
            reference = first.ip_adapter.image
            kwargs["ip_adapter_image"] = reference if reference.mode == "RGB" else reference.convert("RGB")
        missing = [name for name in kwargs if name not in params]
        if missing:
            raise PipelineError(f"the pipeline takes no {', '.join(missing)}")
        return kwargs

    def finish(
        self, mode: str, first: GenerationTask, images: list[Image.Image], *, pipe: Any = None
    ) -> list[Image.Image]:
        """Post-process a call's RGB images. A model with a native size (`pipe`'s, see
        images.backends.local.native) drew them at that size: they are fitted to the
        task's size first. Inpainting pastes the input back where the
        mask is black (softly where it is grey): the pipeline already keeps the black
        region at the input's latents, but a VAE round trip is lossy (colour shifts, blur;
        with random weights: garbage), so the composite makes "keep" mean keep."""
        if pipe is not None and native.native_size(pipe) is not None:
            base = first.init_image if mode != "text2img" else None
            images = [native.fit(image, first.width, first.height, base=base) for image in images]
        if mode != "inpaint":
            return images
        init = first.init_image if first.init_image.mode == "RGB" else first.init_image.convert("RGB")
        mask = first.mask_image if first.mask_image.mode == "L" else first.mask_image.convert("L")
        return [PILImage.composite(image, init, mask) for image in images]

    # -- previews ----------------------------------------------------------------------

    def decode_preview(
        self, pipe: Any, latents: torch.Tensor, *, width: int, height: int, max_size: int
    ) -> list[Image.Image]:
        """Small RGB previews of a step's latents (rows = images), decoded the way the
        family's pipeline decodes. Raises PipelineError."""
        layout = self.spec.latents if self.spec else "spatial"
        if layout == "spatial" and native.native_size(pipe) is not None:
            scale = min(1.0, max_size / max(width, height))  # the request's shape, at most max_size
            small = (max(8, round(width * scale)), max(8, round(height * scale)))
            decoded = previews.decode_latents_preview(pipe, latents, max_size=max_size)
            return [native.fit(image, *small) for image in decoded]
        if layout == "spatial":
            return previews.decode_latents_preview(pipe, latents, max_size=max_size)
        if layout == "packed":
            return previews.decode_packed_preview(pipe, latents, width=width, height=height, max_size=max_size)
        if layout == "packed_video":
            return previews.decode_packed_video_preview(pipe, latents, width=width, height=height, max_size=max_size)
        if layout == "packed_flux2":
            return previews.decode_flux2_preview(pipe, latents, width=width, height=height, max_size=max_size)
        raise PipelineError(f"no preview decoder for {self.name} latents")


DEFAULT = Family()
_REGISTRY: dict[str, Family] = {}


def register(family: Family, *class_names: str) -> None:
    """Serve pipelines of these diffusers class names with `family`."""
    for name in class_names:
        _REGISTRY[name] = family


def family_for(class_name: str | None) -> Family:
    """The family registered for a pipeline class name; DEFAULT for any other."""
    return _REGISTRY.get(class_name or "", DEFAULT)


def family_of(pipe: Any) -> Family:
    """The family of a loaded (or derived, or lane) pipeline."""
    return family_for(type(pipe).__name__)


@functools.lru_cache(maxsize=256)
def _source_class(location: str) -> str | None:
    if os.path.isdir(location):
        try:
            with open(os.path.join(location, "model_index.json"), encoding="utf-8") as handle:
                return json.load(handle).get("_class_name")
        except (OSError, ValueError, AttributeError):
            return None
    try:  # a hub id: its model_index.json in the local hub cache, never fetched here
        return DiffusionPipeline.load_config(location, local_files_only=True).get("_class_name")
    except Exception:
        return None


def family_for_source(source: PipelineSource) -> Family:
    """The family of a model before (or without) loading it, from its model_index.json
    (a folder, or a hub id already in the local hub cache); DEFAULT when unknown."""
    return family_for(_source_class(os.path.expanduser(source.source)))


for _spec in FAMILIES:
    register(
        Family(_spec),
        *(c for c in (*_spec.pipelines, _spec.img2img_pipeline, _spec.inpaint_pipeline, _spec.reference_pipeline) if c),
    )
