"""Per-architecture differences, one class per family of diffusers pipelines.

Everything that depends on the architecture lives here: how a model is loaded and
prepared, how the image-to-image / inpainting / per-lane pipelines are made from it,
which call arguments a pipeline call takes, and how intermediate latents become a
preview. The rest of the backend asks `family_of(pipe)` (or `family_for(class_name)`
before loading) and never looks at the architecture itself.

The registry is keyed by the diffusers pipeline class name (`model_index.json`'s
`_class_name`, `type(pipe).__name__`); unknown names get `DEFAULT`, the SD-style UNet
family, which is what every model served today uses (the demo model, SD 1.5, SDXL).
To add a family (FLUX: a transformer, packed latents, no negative prompt; SD3: three
text encoders...), subclass `Family`, override what differs and `register()` it under
every class name it covers, the derived image-to-image and inpainting classes included.
"""
from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import torch

from images.backends.base import GenerationTask
from images.backends.local import previews

if TYPE_CHECKING:
    from PIL import Image

    from images.backends.local.config import LocalConfig

logger = logging.getLogger(__name__)

_TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


class Family:
    """The SD-style UNet family (Stable Diffusion 1.x/2.x, SDXL, the demo model): the
    default, and the base class of other families."""

    name = "unet"
    denoiser = "unet"  # the pipeline attribute holding the denoising network

    def load_kwargs(self, model_config: dict[str, Any]) -> dict[str, Any]:
        """Extra from_pretrained arguments, given the folder's model_index.json."""
        if "safety_checker" in model_config:  # SD 1.x/2.x; other pipelines would warn about the kwargs
            return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        return {}

    def load(self, location: str, **kwargs: Any) -> Any:
        """The text-to-image pipeline of the folder or hub id `location`."""
        from diffusers import AutoPipelineForText2Image

        return AutoPipelineForText2Image.from_pretrained(location, **kwargs)

    def prepare(self, pipe: Any, *, device: str, settings: LocalConfig) -> None:
        """Tune a freshly loaded pipeline (on its device) for serving."""
        pipe.set_progress_bar_config(disable=True)
        # diffusers already uses torch's scaled_dot_product_attention (AttnProcessor2_0)
        # by default on torch >= 2, so nothing to enable for SDPA.
        denoiser = getattr(pipe, self.denoiser, None)
        if device.startswith("cuda") and denoiser is not None:
            denoiser.to(memory_format=torch.channels_last)
        if settings.compile and denoiser is not None:
            # Compiled lazily, on the first call at each shape: warm_up makes those calls at
            # start for warmup_sizes. Lanes clone the pipeline, so they share this.
            setattr(pipe, self.denoiser, torch.compile(denoiser, mode=settings.compile_mode,
                                                       backend=settings.compile_backend))
        vae = getattr(pipe, "vae", None)
        if vae is not None and settings.vae_tiling:
            vae.enable_tiling()  # lower peak memory for large images; changes pixels slightly

    def derive(self, base: Any, kind: str) -> Any:
        """The img2img/inpaint pipeline sharing base's components (no extra weights).
        Raises whatever diffusers raises when the architecture has no such pipeline."""
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        auto = AutoPipelineForImage2Image if kind == "img2img" else AutoPipelineForInpainting
        # The Auto* classes map e.g. StableDiffusionPipeline -> StableDiffusionImg2ImgPipeline
        # / StableDiffusionInpaintPipeline (SDXL etc. likewise). Unlike
        # DiffusionPipeline.from_pipe they do not cast the (shared!) modules to a dtype.
        pipe = auto.from_pipe(base)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def lane_clone(self, base: Any) -> Any:
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

    def call_kwargs(self, kind: str, first: GenerationTask, size: int, strength: float) -> dict[str, Any]:
        """The image inputs of one pipeline call of `size` images of task `first`'s kind
        (`strength`: what the pipeline is given, see runner.pipeline_strength)."""
        if kind == "text2img":
            return {"width": first.width, "height": first.height}
        init = first.init_image if first.init_image.mode == "RGB" else first.init_image.convert("RGB")
        # One copy per image: with a list of generators diffusers encodes each copy with
        # its own generator, so an image depends only on its seed.
        kwargs: dict[str, Any] = {"image": [init] * size, "strength": strength}
        if kind == "inpaint":
            mask = first.mask_image if first.mask_image.mode == "L" else first.mask_image.convert("L")
            kwargs.update(mask_image=[mask] * size, width=first.width, height=first.height)
        return kwargs

    def finish(self, kind: str, first: GenerationTask, images: list[Image.Image]) -> list[Image.Image]:
        """Post-process a call's RGB images. Inpainting pastes the input back where the
        mask is black (softly where it is grey): the pipeline already keeps the black
        region at the input's latents, but a VAE round trip is lossy (colour shifts, blur;
        with the random demo VAE: garbage), so the composite makes "keep" mean keep."""
        if kind != "inpaint":
            return images
        from PIL import Image as PILImage

        init = first.init_image if first.init_image.mode == "RGB" else first.init_image.convert("RGB")
        mask = first.mask_image if first.mask_image.mode == "L" else first.mask_image.convert("L")
        return [PILImage.composite(image, init, mask) for image in images]

    def decode_preview(self, pipe: Any, latents: torch.Tensor, *, max_size: int) -> list[Image.Image]:
        """Small RGB previews of a step's latents (rows = images). Raises PipelineError."""
        return previews.decode_latents_preview(pipe, latents, max_size=max_size)


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


register(DEFAULT,
         "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
         "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
