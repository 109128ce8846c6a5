"""Model families as data: what each diffusers architecture can do, and how it is driven.

Torch-free on purpose: the web tier reads a model's capabilities before any credit is
held (images.profiles.capabilities_check), the `model_add` command recognises a folder
from its `model_index.json` without importing torch, and the local backend's Family
hooks (images.backends.local.families) read the same records to load, call, batch and
preview each architecture. One record per family; every diffusers pipeline class name
it covers (text-to-image first) maps back to it.

Capabilities (`capabilities_of`) are what is stored on an ImageModel row:
    {"family": "flux", "guidance": "distilled", "negative_prompt": false,
     "edit_modes": ["img2img", "inpaint"], "size_multiple": 16}
Edit modes: "img2img" (the input image noised by `strength`), "inpaint" (a mask says
what to repaint), "reference" (the input is shown to the model as a reference, as FLUX.1
Kontext and FLUX.2 do; no strength). An empty dict means "unknown": served as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Guidance modes: how the model row's one `guidance` float reaches the pipeline.
CFG = "cfg"  # classifier-free guidance, `guidance_scale` (two passes per step when > 1)
DISTILLED = "distilled"  # a guidance embedding, `guidance_scale` (one pass; FLUX.1-dev)
TRUE_CFG = "true_cfg"  # `true_cfg_scale`, with a negative prompt always sent (Qwen-Image)
NO_GUIDANCE = "none"  # step-distilled models: the value is not used

EDIT_MODES = ("img2img", "inpaint", "reference")
# FLUX.2 [klein]: step-distilled checkpoints (`is_distilled`) ignore guidance; the base
# checkpoints use it as a classifier-free guidance scale (no guidance embedding).
KLEIN_PIPELINES = ("Flux2KleinPipeline",)


class FamilyError(ValueError):
    """A folder this platform cannot serve; the message says why."""


@dataclass(frozen=True)
class FamilySpec:
    name: str
    title: str
    pipelines: tuple[str, ...]  # model_index.json `_class_name` values (text-to-image first)
    denoiser: str = "transformer"  # the pipeline attribute compile/memory format apply to
    guidance: str = CFG
    negative_prompt: bool = True  # a negative prompt changes the image
    img2img_pipeline: str | None = None  # diffusers class names of the derived pipelines
    inpaint_pipeline: str | None = None
    reference_pipeline: str | None = None  # takes `image=` as a reference (no strength)
    size_multiple: int = 16  # width and height must be multiples (VAE factor x patch size)
    cuda_dtype: str = "bfloat16"  # what `dtype: auto` means on CUDA (the published weights)
    # How step latents become a preview: "spatial" (B,C,H,W), "packed" (FLUX-style 2x2
    # patches in a sequence, unpacked with the pipeline's _unpack_latents), "packed_video"
    # (packed, then a 5-D video VAE with latent statistics: Qwen-Image).
    latents: str = "spatial"
    # What a request must share with another for both to run in one pipeline call
    # without influencing each other (see images.backends.local.families.Family.batch_key):
    # "negative_presence": whether a negative prompt is sent changes every row (SDXL's
    # zeroed negatives, CFG switched on for the whole call); "prompt": prompts are padded
    # to the longest one without an attention mask (CogView4), so only equal prompts batch.
    batch_isolation: tuple[str, ...] = ("negative_presence",)
    # The pipeline rescales every request to one area, (default_sample_size x VAE factor)^2
    # (HiDream): the backend sets that area to the requested one per call.
    fixed_area: bool = False
    steps: dict[str, int] = field(default_factory=dict)  # recommended steps per quality
    default_guidance: float = 5.0
    hub_ids: tuple[str, ...] = ()
    notes: str = ""

    @property
    def edit_modes(self) -> tuple[str, ...]:
        return tuple(mode for mode in EDIT_MODES if getattr(self, f"{mode}_pipeline"))

    def pipeline_for(self, kind: str) -> str | None:
        """The diffusers class serving `kind` (text2img, img2img, inpaint, reference)."""
        if kind == "text2img":
            return self.pipelines[0]
        return getattr(self, f"{kind}_pipeline", None)


def _steps(low: int, medium: int, high: int) -> dict[str, int]:
    # dall-e-2/-3 qualities (standard, hd) map onto medium and high.
    return {"low": low, "medium": medium, "high": high, "standard": medium, "hd": high, "default": medium}


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec(
        "sd",
        "Stable Diffusion 1.x / 2.x",
        ("StableDiffusionPipeline",),
        denoiser="unet",
        img2img_pipeline="StableDiffusionImg2ImgPipeline",
        inpaint_pipeline="StableDiffusionInpaintPipeline",
        size_multiple=8,
        cuda_dtype="float16",
        batch_isolation=(),
        steps=_steps(15, 25, 40),
        default_guidance=7.5,
        hub_ids=("stable-diffusion-v1-5/stable-diffusion-v1-5",),
        notes="CLIP pads every prompt to 77 tokens and a missing negative prompt is the empty one, so any "
        "requests batch together.",
    ),
    FamilySpec(
        "sdxl",
        "Stable Diffusion XL",
        ("StableDiffusionXLPipeline",),
        denoiser="unet",
        img2img_pipeline="StableDiffusionXLImg2ImgPipeline",
        inpaint_pipeline="StableDiffusionXLInpaintPipeline",
        size_multiple=8,
        cuda_dtype="float16",
        steps=_steps(15, 25, 40),
        default_guidance=5.0,
        hub_ids=("stabilityai/stable-diffusion-xl-base-1.0",),
        notes="Without a negative prompt SDXL zeroes the unconditional embedding for the whole call, so "
        "requests with and without one never share a call.",
    ),
    FamilySpec(
        "sd3",
        "Stable Diffusion 3 / 3.5",
        ("StableDiffusion3Pipeline",),
        img2img_pipeline="StableDiffusion3Img2ImgPipeline",
        inpaint_pipeline="StableDiffusion3InpaintPipeline",
        steps=_steps(16, 28, 40),
        default_guidance=4.5,
        hub_ids=(
            "stabilityai/stable-diffusion-3.5-large",
            "stabilityai/stable-diffusion-3.5-medium",
            "stabilityai/stable-diffusion-3-medium-diffusers",
        ),
    ),
    FamilySpec(
        "flux",
        "FLUX.1 [dev] / [schnell]",
        ("FluxPipeline",),
        guidance=DISTILLED,
        negative_prompt=False,
        img2img_pipeline="FluxImg2ImgPipeline",
        inpaint_pipeline="FluxInpaintPipeline",
        latents="packed",
        batch_isolation=(),
        steps=_steps(12, 28, 40),
        default_guidance=3.5,
        hub_ids=("black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"),
        notes="Guidance is an embedding (dev); schnell has none (guidance `none`, 4 steps). Negative prompts "
        "are refused: they would be ignored.",
    ),
    FamilySpec(
        "flux-kontext",
        "FLUX.1 Kontext [dev]",
        ("FluxKontextPipeline",),
        guidance=DISTILLED,
        negative_prompt=False,
        reference_pipeline="FluxKontextPipeline",
        latents="packed",
        batch_isolation=(),
        steps=_steps(12, 28, 40),
        default_guidance=2.5,
        hub_ids=("black-forest-labs/FLUX.1-Kontext-dev",),
        notes="Edits are reference edits at the requested size (no strength, no mask).",
    ),
    FamilySpec(
        "flux2",
        "FLUX.2 [dev] / [klein]",
        ("Flux2Pipeline", "Flux2KleinPipeline"),
        guidance=DISTILLED,
        negative_prompt=False,
        reference_pipeline="Flux2Pipeline",
        latents="packed_flux2",
        batch_isolation=(),
        steps=_steps(12, 28, 50),
        default_guidance=4.0,
        hub_ids=("black-forest-labs/FLUX.2-dev", "black-forest-labs/FLUX.2-klein-4B"),
        notes="Edits are reference edits. klein (step-distilled) ignores guidance.",
    ),
    FamilySpec(
        "chroma",
        "Chroma",
        ("ChromaPipeline",),
        img2img_pipeline="ChromaImg2ImgPipeline",
        latents="packed",
        steps=_steps(16, 28, 40),
        default_guidance=4.0,
        hub_ids=("lodestones/Chroma1-HD",),
        notes="Real CFG with negative prompts; img2img through ChromaImg2ImgPipeline (not auto-mapped).",
    ),
    FamilySpec(
        "pixart-sigma",
        "PixArt-Σ",
        ("PixArtSigmaPipeline",),
        size_multiple=8,
        steps=_steps(12, 20, 30),
        default_guidance=4.5,
        hub_ids=("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",),
        notes="Legacy step callback; renders at the nearest resolution bin and resizes back.",
    ),
    FamilySpec(
        "sana",
        "Sana",
        ("SanaPipeline",),
        size_multiple=32,
        steps=_steps(12, 20, 30),
        default_guidance=4.5,
        hub_ids=("Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",),
        notes="32x deep-compression VAE; renders at the nearest resolution bin and resizes back.",
    ),
    FamilySpec(
        "lumina2",
        "Lumina Image 2.0",
        ("Lumina2Pipeline", "Lumina2Text2ImgPipeline"),
        steps=_steps(16, 30, 50),
        default_guidance=4.0,
        hub_ids=("Alpha-VLLM/Lumina-Image-2.0",),
    ),
    FamilySpec(
        "cogview4",
        "CogView4",
        ("CogView4Pipeline",),
        size_multiple=32,
        batch_isolation=("negative_presence", "prompt"),
        steps=_steps(20, 30, 50),
        default_guidance=3.5,
        hub_ids=("THUDM/CogView4-6B",),
        notes="Prompts are padded to the longest without a mask: only identical prompts share a call.",
    ),
    FamilySpec(
        "z-image",
        "Z-Image",
        ("ZImagePipeline",),
        img2img_pipeline="ZImageImg2ImgPipeline",
        steps=_steps(6, 8, 12),
        default_guidance=1.0,
        hub_ids=("Tongyi-MAI/Z-Image-Turbo",),
        notes="Turbo is distilled: guidance 1.0 (no CFG), 8 steps.",
    ),
    FamilySpec(
        "hidream",
        "HiDream-I1",
        ("HiDreamImagePipeline",),
        fixed_area=True,
        steps=_steps(16, 28, 50),
        default_guidance=5.0,
        hub_ids=("HiDream-ai/HiDream-I1-Full", "HiDream-ai/HiDream-I1-Fast"),
        notes="Not in diffusers' auto mapping: loaded through its own class. Rendered at the requested size "
        "(the pipeline alone rescales every request to a 1024x1024 area).",
    ),
    FamilySpec(
        "qwen-image",
        "Qwen-Image",
        ("QwenImagePipeline",),
        guidance=TRUE_CFG,
        img2img_pipeline="QwenImageImg2ImgPipeline",
        inpaint_pipeline="QwenImageInpaintPipeline",
        latents="packed_video",
        steps=_steps(20, 30, 50),
        default_guidance=4.0,
        hub_ids=("Qwen/Qwen-Image",),
        notes="Guidance is `true_cfg_scale`; a blank negative prompt is always sent so it applies.",
    ),
)

_BY_PIPELINE: dict[str, FamilySpec] = {}
_BY_NAME: dict[str, FamilySpec] = {}
for _spec in FAMILIES:
    _BY_NAME[_spec.name] = _spec
    for _class in (*_spec.pipelines, _spec.img2img_pipeline, _spec.inpaint_pipeline, _spec.reference_pipeline):
        if _class:
            _BY_PIPELINE.setdefault(_class, _spec)


def family_named(name: str) -> FamilySpec | None:
    return _BY_NAME.get(name)


def family_for_pipeline(class_name: str | None) -> FamilySpec | None:
    """The family of a diffusers pipeline class name; None when unknown."""
    return _BY_PIPELINE.get(class_name or "")


def capabilities_of(spec: FamilySpec, *, guidance: str | None = None) -> dict[str, Any]:
    """What an ImageModel row records of its family (module docstring)."""
    return {
        "family": spec.name,
        "guidance": guidance or spec.guidance,
        "negative_prompt": spec.negative_prompt,
        "edit_modes": list(spec.edit_modes),
        "size_multiple": spec.size_multiple,
    }


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """The folder's model_index.json. Raises FamilyError saying what is wrong."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FamilyError(f"{folder} is not a folder (hub ids must be downloaded into a folder first)")
    index = path / "model_index.json"
    if not index.is_file():
        raise FamilyError(
            f"{folder} has no model_index.json: not a diffusers pipeline folder "
            "(single-file checkpoints are not served; a LoRA adapter is added over its base model "
            "with `manage.py lora_add`)"
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FamilyError(f"{index} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise FamilyError(f"{index} names no pipeline class (`_class_name`)")
    return data


def folder_variant_guidance(spec: FamilySpec, folder: str | Path, model_index: dict[str, Any]) -> str:
    """The guidance mode of this checkpoint: step-distilled variants ignore guidance
    (FLUX.1-schnell has no guidance embedding, FLUX.2-klein is marked distilled)."""
    if spec.name in ("flux", "flux-kontext"):
        try:
            config = json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return spec.guidance
        return spec.guidance if config.get("guidance_embeds", True) else NO_GUIDANCE
    if spec.name == "flux2" and model_index.get("is_distilled"):
        return NO_GUIDANCE
    if spec.name == "flux2" and model_index.get("_class_name") in KLEIN_PIPELINES:
        return CFG
    return spec.guidance


def recognise_folder(folder: str | Path) -> tuple[FamilySpec, dict[str, Any]]:
    """(family, capabilities) of a local pipeline folder, read without torch.
    Raises FamilyError with the reason when the folder cannot be served."""
    data = read_model_index(folder)
    class_name = data["_class_name"]
    spec = family_for_pipeline(class_name)
    if spec is None:
        known = ", ".join(sorted(s.pipelines[0] for s in FAMILIES))
        raise FamilyError(f"{folder} is a {class_name}, which this platform does not serve (known: {known})")
    if class_name not in spec.pipelines:
        raise FamilyError(
            f"{folder} is a {class_name} ({spec.title}'s {_kind_of(spec, class_name)} pipeline); "
            f"register the text-to-image checkpoint ({spec.pipelines[0]}) instead"
        )
    return spec, capabilities_of(spec, guidance=folder_variant_guidance(spec, folder, data))


def _kind_of(spec: FamilySpec, class_name: str) -> str:
    for kind in EDIT_MODES:
        if spec.pipeline_for(kind) == class_name:
            return kind
    return "derived"


def folder_capabilities(folder: str | Path) -> dict[str, Any]:
    """Capabilities of a folder, {} when it cannot be recognised (never raises)."""
    try:
        return recognise_folder(folder)[1]
    except (FamilyError, OSError):
        return {}
