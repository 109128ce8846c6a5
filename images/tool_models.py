"""Tool models on the request path (issue 26 item 1; docs/models.md "Tool models").

A tool model is an ImageModel row whose `kind` is not `generator`: an upscaler, a
background remover, a text-prompted segmenter or a captioner. Its jobs are Job kinds of
their own (TOOL_JOB_KINDS: `upscale`, `remove_bg`, `segment`, `describe`), made by the
one generation service (images.services.generation.generation_create) like every other
job, so holds, 402s, refunds, moderation of the text, limits, Idempotency-Key, storage
and progress are the same; only what the request may carry and the job's size differ:

- one input image (PNG, JPEG or WEBP, at most TOOL_MAX_BYTES), never resized: the job's
  size is the input's (an upscale's output is the model's scale, 4x for the embedded
  one, times that; its input is at most UPSCALE_MAX_PIXELS);
- `prompt`: what a segmenter looks for (required there, moderated); for an upscale, the
  prompt of a diffusion upscaler (moderated; `negative_prompt` too), see below; ignored
  elsewhere;
- n = 1, no quality, steps or guidance; `output_format` png (default) or webp, which
  keep a removed background's alpha; jpeg only for upscales.

A prompted upscale (Stability's upscale/creative and conservative) also sends
`creativity` (0-1): the job then records a diffusion upscaler's settings, which an
ESRGAN-class upscaler ignores: `noise_level` = round(creativity x UPSCALE_MAX_NOISE_LEVEL)
(in extra["upscale"]), the steps (the model row's steps_by_quality["standard"], else
UPSCALE_DIFFUSION_STEPS) and the guidance (the row's, else UPSCALE_DIFFUSION_GUIDANCE).
An upscaler is an ESRGAN-class weight file or a diffusers StableDiffusionUpscalePipeline
folder (stabilityai/stable-diffusion-x4-upscaler; tool_folder_check).

Prices are the tool model's price rows of the job's kind (a row `upscale`, `remove_bg`,
`segment` or `describe`, any size), failing closed like any model. Vendor shapes build
their request with `tool_generation_request` (Stability's upscale/fast and
remove-background, the Midjourney proxy's describe), in images/services/tools.py.
Torch-free: the worker side is images/tool_worker.py, the models
images/backends/local/tools.py. (`request` below is an images.services.generation
GenerationRequest, which imports this module.)
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from core.errors import InvalidRequest
from images.models import ImageModel, Job
from images.profiles import MB, Inputs
from images.validation import MAX_SEED, GenerationParams

# Job kind -> the model kind that serves it.
MODEL_KIND_OF_JOB = {
    Job.Kind.UPSCALE: ImageModel.Kind.UPSCALER,
    Job.Kind.REMOVE_BACKGROUND: ImageModel.Kind.BACKGROUND_REMOVER,
    Job.Kind.SEGMENT: ImageModel.Kind.SEGMENTER,
    Job.Kind.DESCRIBE: ImageModel.Kind.CAPTIONER,
}
TOOL_JOB_KINDS = tuple(MODEL_KIND_OF_JOB)
TOOL_MAX_BYTES = 50 * MB
# An upscale's input, in pixels (Stability's upscale/fast takes at most 1,048,576): the
# output is scale^2 times larger (16 MP for 4x) and is made in one call, untiled.
UPSCALE_MAX_PIXELS = 1024 * 1024
TOOL_INPUTS = Inputs(
    max_images=1,
    formats=("png", "jpeg", "webp"),
    max_bytes=TOOL_MAX_BYTES,
    square=False,
    mask=False,
    json_body=False,
    transparency_mask=False,
)
# What an upscaler's weight file may be (the suffixes the local backend's loader takes).
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
PROMPT_MAX = 1000  # a segmenter's text, in characters
UPSCALE_PROMPT_MAX = 10_000  # an upscale's prompt and negative prompt (Stability's prompt limit)
# A diffusion upscaler (StableDiffusionUpscalePipeline): the max_noise_level creativity
# is scaled to (both stabilityai/stable-diffusion-x4-upscaler's and the tiny one's is
# 350; a model with a lower one fails the job), and the steps and guidance when its row
# sets none (the pipeline's own defaults are 75 and 9.0).
UPSCALE_MAX_NOISE_LEVEL = 350
UPSCALE_DIFFUSION_STEPS = 30
UPSCALE_DIFFUSION_GUIDANCE = 9.0
# model_index.json `_class_name` of a diffusion upscaler folder.
SD_UPSCALE_CLASS = "StableDiffusionUpscalePipeline"
ACTIONS = {
    Job.Kind.UPSCALE: "upscaling",
    Job.Kind.REMOVE_BACKGROUND: "background removal",
    Job.Kind.SEGMENT: "text-prompted segmentation",
    Job.Kind.DESCRIBE: "describing images",
}


def tool_model_check(*, model: ImageModel, kind: str) -> None:
    """Refuse (400 `unsupported_model`, param `model`) a tool job for a model of another
    kind, and a generate/edit/variation for a tool model."""
    wanted = MODEL_KIND_OF_JOB.get(kind, ImageModel.Kind.GENERATOR)
    if model.kind == wanted:
        return
    if wanted == ImageModel.Kind.GENERATOR:
        message = f"The model '{model.public_id}' is a {model.get_kind_display().lower()}, not an image generator."
    else:
        message = f"The model '{model.public_id}' does not support {ACTIONS[kind]}."
    raise InvalidRequest(message, param="model", code="unsupported_model")


def tool_inputs_rules(*, model: ImageModel, request: Any) -> Inputs:
    """Step 5 of generation_create for tool jobs: the model's kind, then the input rules
    (one image; the mask is refused by inputs_peek)."""
    tool_model_check(model=model, kind=request.kind)
    if not request.images:
        raise InvalidRequest("Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    return TOOL_INPUTS


def tool_params_resolve(*, request: Any, model: ImageModel) -> GenerationParams:
    """The job's parameters (module docstring): its size is the input's once known (a URL
    input is re-resolved after its fetch; 1x1 until then); a prompted upscale's diffusion
    settings. 400 for a missing segmenter text, a text over its limit, a creativity
    outside 0-1, a format that drops what the tool makes, n other than 1, or an upscale
    input over UPSCALE_MAX_PIXELS."""
    data = request.fields
    kind = request.kind
    prompted = kind in (Job.Kind.SEGMENT, Job.Kind.UPSCALE)
    prompt = (data.get("prompt") or "").strip() if prompted else ""
    negative = (data.get("negative_prompt") or "").strip() if kind == Job.Kind.UPSCALE else ""
    if kind == Job.Kind.SEGMENT and not prompt:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    limit = UPSCALE_PROMPT_MAX if kind == Job.Kind.UPSCALE else PROMPT_MAX
    for param, text in (("prompt", prompt), ("negative_prompt", negative)):
        if len(text) > limit or "\x00" in text:
            raise InvalidRequest(
                f"The {param} must be at most {limit} characters, without NUL characters.",
                param=param,
                code="invalid_value",
            )
    steps, guidance, extra = 1, 0.0, {}
    creativity = data.get("creativity") if kind == Job.Kind.UPSCALE else None
    if creativity is not None:
        if isinstance(creativity, bool) or not isinstance(creativity, (int, float)) or not 0 <= creativity <= 1:
            raise InvalidRequest("creativity must be a number from 0 to 1.", param="creativity", code="invalid_value")
        steps = int((model.steps_by_quality or {}).get("standard") or UPSCALE_DIFFUSION_STEPS)
        guidance = float(model.guidance or UPSCALE_DIFFUSION_GUIDANCE)
        extra = {"upscale": {"noise_level": round(creativity * UPSCALE_MAX_NOISE_LEVEL)}}
    n = data.get("n")
    if n not in (None, 1):
        raise InvalidRequest("You must provide n=1 for this model.", param="n", code="invalid_value")
    output_format = data.get("output_format") or "png"
    allowed = ("png", "webp", "jpeg") if kind == Job.Kind.UPSCALE else ("png", "webp")
    if output_format not in allowed:
        raise InvalidRequest(
            f"Invalid value: '{output_format}'. Supported values are: {', '.join(repr(v) for v in allowed)}.",
            param="output_format",
            code="invalid_value",
        )
    compression = data.get("output_compression")
    first = request.images[0]  # (an images.services.inputs.InputImage)
    width, height = (first.width, first.height) if first.peeked else (1, 1)
    if kind == Job.Kind.UPSCALE and width * height > UPSCALE_MAX_PIXELS:
        raise InvalidRequest(
            f"The image is {width}x{height} ({width * height} pixels); upscaling takes at most "
            f"{UPSCALE_MAX_PIXELS} pixels.",
            param="image",
            code="image_too_large",
        )
    seed = data.get("seed")
    return GenerationParams(
        model=model.public_id,
        profile=model.profile,
        prompt=prompt,
        model_prompt=prompt,
        negative_prompt=negative,
        n=1,
        size=f"{width}x{height}",
        width=width,
        height=height,
        quality="",
        steps=steps,
        guidance=guidance,
        seed=secrets.randbelow(MAX_SEED - 10) if seed is None else seed,
        response_format=data.get("response_format") or "url",
        output_format=output_format,
        output_compression=100 if compression is None else compression,
        background="transparent" if kind == Job.Kind.REMOVE_BACKGROUND else "opaque",
        moderation=data.get("moderation") or "auto",
        style=None,
        stream=False,
        partial_images=0,
        user=data.get("user"),
        extra=extra,
    )


# ---- the embedded defaults ----------------------------------------------------------------

# public id -> (model kind, folder under MODEL_DIR, the job kind priced, credits per image).
# Built with random weights by `manage.py build_tool_models` (make setup), seeded as
# rows by `tool_models_seed` (make setup's registry_seed); docs/models.md says which real
# checkpoints replace them.
SEEDED_TOOLS = {
    "esrgan-tiny-x4": (ImageModel.Kind.UPSCALER, "tools/esrgan-tiny-x4", Job.Kind.UPSCALE, 8),
    "segformer-tiny-rmbg": (
        ImageModel.Kind.BACKGROUND_REMOVER,
        "tools/segformer-tiny-rmbg",
        Job.Kind.REMOVE_BACKGROUND,
        4,
    ),
    "clipseg-tiny": (ImageModel.Kind.SEGMENTER, "tools/clipseg-tiny", Job.Kind.SEGMENT, 4),
    "vit-gpt2-tiny-captioner": (ImageModel.Kind.CAPTIONER, "tools/vit-gpt2-tiny-captioner", Job.Kind.DESCRIBE, 2),
    # Control tool models (Stability's control/*, images/control.py): no job kind and no
    # price row of their own: they run inside a generator's job, priced as part of it
    # (like the segmenter of search-and-replace). The ControlNets and the IP-Adapter are
    # derived from the demo generator's folder (CONTROL_BASE_BUILT).
    "controlnet-tiny-canny": (ImageModel.Kind.CONTROLNET, "tools/controlnet-tiny-canny", None, 0),
    "controlnet-tiny-depth": (ImageModel.Kind.CONTROLNET, "tools/controlnet-tiny-depth", None, 0),
    "dpt-tiny-depth": (ImageModel.Kind.DEPTH_ESTIMATOR, "tools/dpt-tiny-depth", None, 0),
    "ip-adapter-tiny": (ImageModel.Kind.IP_ADAPTER, "tools/ip-adapter-tiny", None, 0),
    # A diffusion upscaler (StableDiffusionUpscalePipeline; Stability's upscale/creative
    # and conservative): prompted, seeded, x4. (Last: the build seeds go by position.)
    "sd-x4-upscaler-tiny": (ImageModel.Kind.UPSCALER, "tools/sd-x4-upscaler-tiny", Job.Kind.UPSCALE, 8),
}
# Seeded tools built by another builder than their kind's (tool_builders.BUILDERS keys).
SEEDED_BUILDERS = {"sd-x4-upscaler-tiny": "sd_upscaler"}
# Row fields of a seeded tool other than the defaults (steps and guidance of a diffusion
# upscaler: few steps, so a CPU runs the tiny one in seconds).
SEEDED_TOOL_FIELDS: dict[str, dict[str, Any]] = {
    "sd-x4-upscaler-tiny": {"steps_by_quality": {"standard": 6}, "guidance": 7.5},
}
# Seeded tool kinds built from a generator folder (the demo model's, images.seed.DEMO_SOURCE).
CONTROL_BASE_BUILT = (ImageModel.Kind.CONTROLNET, ImageModel.Kind.IP_ADAPTER)
# The file of an IP-Adapter folder's weights (h94/IP-Adapter's are renamed or linked to it)
# and its image encoder's subfolder.
IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"
IP_ADAPTER_ENCODER = "image_encoder"


def tool_models_seed() -> int:
    """Create the missing seeded tool models with their price row (none for the control
    tool models, priced inside their generator's job; never overwrites an operator's
    edits); returns how many were created. Their profile is unused (`dall-e-2`)."""
    from billing.models import Price

    created = 0
    for public_id, (model_kind, folder, job_kind, credits) in SEEDED_TOOLS.items():
        model, was_created = ImageModel.objects.get_or_create(
            public_id=public_id,
            defaults={
                "kind": model_kind,
                "profile": ImageModel.Profile.DALLE2,
                "source": folder,
                "steps_by_quality": {},
                "guidance": 0.0,
                "queue": "gpu",
                **SEEDED_TOOL_FIELDS.get(public_id, {}),
            },
        )
        if was_created:
            created += 1
            if job_kind is not None:
                Price.objects.create(model=model, kind=job_kind, credits_per_image=credits)
    return created


def tool_folder_check(*, kind: str, source: str) -> Path:
    """The file or folder of a tool model's `source` (absolute, under MODEL_DIR, or
    relative to here), checked for what its loader reads, without loading it: an
    upscaler is a weight file (or a folder with exactly one), or a diffusers folder whose
    model_index.json names SD_UPSCALE_CLASS, with its unet/ and vae/; a ControlNet a diffusers
    folder with config.json and its weights; an IP-Adapter a folder with
    IP_ADAPTER_WEIGHTS and an IP_ADAPTER_ENCODER/ transformers folder; the others are
    transformers folders with a config.json. Raises ValueError saying what is missing."""
    from django.conf import settings

    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [Path(settings.MODEL_DIR) / source, path]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise ValueError(f"{source}: no such file or folder (relative paths are looked up under MODEL_DIR)")
    if kind == ImageModel.Kind.UPSCALER and found.is_dir() and (found / "model_index.json").is_file():
        try:
            index = json.loads((found / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{source}: model_index.json is not readable JSON ({exc})") from None
        name = index.get("_class_name") if isinstance(index, dict) else None
        if name != SD_UPSCALE_CLASS:
            raise ValueError(
                f"{source}: a diffusers upscaler folder's model_index.json names {SD_UPSCALE_CLASS} "
                f"(stabilityai/stable-diffusion-x4-upscaler), not {name!r}"
            )
        missing = [part for part in ("unet", "vae", "text_encoder", "tokenizer") if not (found / part).is_dir()]
        if missing:
            raise ValueError(f"{source}: a {SD_UPSCALE_CLASS} folder needs {', '.join(p + '/' for p in missing)}")
        return found
    if kind == ImageModel.Kind.UPSCALER:
        files = [found] if found.is_file() else [p for p in found.iterdir() if p.suffix in UPSCALER_SUFFIXES]
        if len(files) != 1 or files[0].suffix not in UPSCALER_SUFFIXES:
            raise ValueError(
                f"{source}: an upscaler is one weight file ({', '.join(UPSCALER_SUFFIXES)}) that spandrel "
                f"loads, a folder holding exactly one, or a {SD_UPSCALE_CLASS} folder (model_index.json)"
            )
        return found
    if kind == ImageModel.Kind.IP_ADAPTER:
        if not (found / IP_ADAPTER_WEIGHTS).is_file() or not (found / IP_ADAPTER_ENCODER / "config.json").is_file():
            raise ValueError(
                f"{source}: an IP-Adapter is a folder with {IP_ADAPTER_WEIGHTS} (e.g. h94/IP-Adapter's "
                f"models/ip-adapter_sd15.safetensors) and {IP_ADAPTER_ENCODER}/ (a CLIPVisionModelWithProjection)"
            )
        return found
    if not (found / "config.json").is_file():
        library = "diffusers" if kind == ImageModel.Kind.CONTROLNET else "transformers"
        raise ValueError(f"{source}: a {kind} is a {library} folder with a config.json (save_pretrained)")
    if kind == ImageModel.Kind.CONTROLNET and not any(found.glob("diffusion_pytorch_model*")):
        raise ValueError(f"{source}: a controlnet folder needs its diffusion_pytorch_model weights")
    return found
