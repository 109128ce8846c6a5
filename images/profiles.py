"""The API profiles of reference §5: what each family of model ids accepts and can do.

Capabilities are data here (which request kinds a profile serves, how many input
images of which formats and sizes), read by the one generation service; no view or
service branches on a profile's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class Inputs:
    """What an edit or variation of a profile accepts (reference §3, §4)."""

    max_images: int  # image files per request
    formats: tuple[str, ...]  # sniffed formats accepted
    max_bytes: int  # per file
    square: bool  # inputs must be square
    mask: bool  # a mask may be sent (edits)
    json_body: bool  # edits may come as JSON `images: [{image_url}]` (GPT image models only)
    transparency_mask: bool  # no mask: the image's transparent area is the mask (dall-e-2)


@dataclass(frozen=True)
class Profile:
    name: str
    prompt_max: int
    n_max: int
    sizes: tuple[str, ...]
    default_size: str
    qualities: tuple[str, ...]  # accepted besides "auto"
    auto_quality: str  # what "auto" resolves to
    gpt: bool  # GPT-image parameters (background, output_format, usage...) apply
    style: bool  # dall-e-3's vivid/natural
    kinds: tuple[str, ...] = ("generate",)  # request kinds served: generate, edit, variation
    edit_inputs: Inputs | None = None
    variation_inputs: Inputs | None = None
    input_fidelity: bool = False  # edits take `input_fidelity` (not gpt-image-1-mini: see models_without_fidelity)

    def inputs_for(self, kind: str) -> Inputs | None:
        return {"edit": self.edit_inputs, "variation": self.variation_inputs}.get(kind)


_DALLE2_INPUTS = Inputs(
    max_images=1, formats=("png",), max_bytes=4 * MB, square=True, mask=True, json_body=False, transparency_mask=True
)
_GPT_INPUTS = Inputs(
    max_images=16,
    formats=("png", "jpeg", "webp"),
    max_bytes=50 * MB,
    square=False,
    mask=True,
    json_body=True,
    transparency_mask=False,
)
_VARIATION_INPUTS = Inputs(
    max_images=1, formats=("png",), max_bytes=4 * MB, square=True, mask=False, json_body=False, transparency_mask=False
)
# Model ids of the GPT image profile that do not take `input_fidelity` (reference §3).
MODELS_WITHOUT_FIDELITY = ("gpt-image-1-mini",)


DALLE2 = Profile(
    "dall-e-2",
    1000,
    10,
    ("256x256", "512x512", "1024x1024"),
    "1024x1024",
    ("standard",),
    "standard",
    gpt=False,
    style=False,
    kinds=("generate", "edit", "variation"),
    edit_inputs=_DALLE2_INPUTS,
    variation_inputs=_VARIATION_INPUTS,
)
DALLE3 = Profile(
    "dall-e-3",
    4000,
    1,
    ("1024x1024", "1792x1024", "1024x1792"),
    "1024x1024",
    ("standard", "hd"),
    "standard",
    gpt=False,
    style=True,
)
GPT_IMAGE = Profile(
    "gpt-image",
    32000,
    10,
    ("1024x1024", "1536x1024", "1024x1536"),
    "1024x1024",
    ("low", "medium", "high"),
    "high",
    gpt=True,
    style=False,
    kinds=("generate", "edit"),
    edit_inputs=_GPT_INPUTS,
    input_fidelity=True,
)

PROFILES = {p.name: p for p in (DALLE2, DALLE3, GPT_IMAGE)}

# dall-e-3's style: a prompt template and a guidance factor. revised_prompt returns
# the exact text the model received.
STYLE_TEMPLATES = {
    "vivid": ("{prompt}, vivid colors, dramatic lighting, hyper-detailed", 1.2),
    "natural": ("{prompt}, natural colors, soft realistic lighting", 0.9),
}

# GPT-image output tokens per image, by size and quality (OpenAI's published
# gpt-image-1 table); used for the `usage` object. Documented in docs/api.md.
OUTPUT_TOKENS = {
    ("1024x1024", "low"): 272,
    ("1024x1024", "medium"): 1056,
    ("1024x1024", "high"): 4160,
    ("1024x1536", "low"): 408,
    ("1024x1536", "medium"): 1584,
    ("1024x1536", "high"): 6240,
    ("1536x1024", "low"): 400,
    ("1536x1024", "medium"): 1568,
    ("1536x1024", "high"): 6208,
}


def output_tokens(size: str, quality: str) -> int:
    if (size, quality) in OUTPUT_TOKENS:
        return OUTPUT_TOKENS[(size, quality)]
    width, height = (int(v) for v in size.split("x"))
    # Outside the table: scale the 1024x1024 figure by area.
    return round(
        OUTPUT_TOKENS[("1024x1024", quality if quality in ("low", "medium", "high") else "high")]
        * width
        * height
        / (1024 * 1024)
    )


# Input-image tokens of GPT image models (reported in `usage.input_tokens_details.image_tokens`
# for edits). Our documented rule, after OpenAI's published vision cost rule for GPT image
# models: the image is scaled to fit inside 2048x2048, then so that its shorter side is at
# most 512 px (never enlarged); it costs 65 base tokens plus 129 per 512x512 tile.
IMAGE_TOKENS_BASE = 65
IMAGE_TOKENS_PER_TILE = 129


def input_image_tokens(width: int, height: int) -> int:
    """Tokens of one input image of `width` x `height` pixels (see the rule above)."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 512 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return IMAGE_TOKENS_BASE + IMAGE_TOKENS_PER_TILE * tiles


# ---------------------------------------------------------------------------
# What the model's architecture can do (its family, images/families_catalog.py), recorded
# on the model row (ImageModel.capabilities) by `manage.py model_add` or by the worker that
# loads it. Checked before any credit is held; an empty record (unknown) refuses nothing.
# ---------------------------------------------------------------------------


def model_capabilities(model) -> dict:
    """The row's capabilities when they were computed from its current source; {}
    (unknown: nothing refused, the worker corrects the row) when its source has changed
    since (images/services/models.py)."""
    if model.capabilities_source != model.source:
        return {}
    return model.capabilities or {}


def edit_mode_for(capabilities: dict, *, masked: bool) -> str | None:
    """The family's edit mode serving an edit (masked: inpainting) or a variation; None
    when it has none. An unknown model (empty capabilities) is assumed to have them all."""
    if not capabilities:
        return "inpaint" if masked else "img2img"
    modes = capabilities.get("edit_modes") or []
    if masked:
        return "inpaint" if "inpaint" in modes else None
    for mode in ("img2img", "reference"):
        if mode in modes:
            return mode
    return None


def capabilities_check(*, model, kind: str, masked: bool, fields: dict) -> None:
    """Refuse (400, naming the parameter) a request the model's family cannot serve:
    an edit or variation without such an edit mode, a mask without inpainting, a
    negative prompt it would ignore, an explicit size that is not a multiple of its rule.
    `masked`: a mask was sent (a dall-e-2 image's transparent pixels are checked again
    once decoded, see generation_create)."""
    from core.errors import InvalidRequest

    caps = model_capabilities(model)
    if not caps:
        return
    family = caps.get("family", "this")
    if kind != "generate" and edit_mode_for(caps, masked=masked) is None:
        if masked and edit_mode_for(caps, masked=False) is not None:
            raise InvalidRequest(
                f"The model '{model.public_id}' ({family} family) cannot inpaint: send the edit "
                "without a mask (or without transparent pixels).",
                param="mask",
                code="unsupported_parameter",
            )
        action = "image variations" if kind == "variation" else "image edits"
        raise InvalidRequest(
            f"The model '{model.public_id}' ({family} family) does not support {action}.",
            param="image",
            code="unsupported_parameter",
        )
    if (fields.get("negative_prompt") or "").strip() and not caps.get("negative_prompt", True):
        raise InvalidRequest(
            f"The model '{model.public_id}' ({family} family) does not use negative prompts; remove 'negative_prompt'.",
            param="negative_prompt",
            code="unsupported_parameter",
        )
    size = fields.get("size")
    multiple = int(caps.get("size_multiple") or 0)
    if multiple > 1 and isinstance(size, str) and "x" in size:
        try:
            width, height = (int(v) for v in size.split("x"))
        except ValueError:
            return  # not a size: the profile's rules refuse it with their own message
        if width % multiple or height % multiple:
            raise InvalidRequest(
                f"The size '{size}' cannot be rendered by '{model.public_id}' ({family} family): "
                f"width and height must be multiples of {multiple}.",
                param="size",
                code="invalid_size",
            )
