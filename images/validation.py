"""Validation of generation requests, field by field as reference §2 and §5 say.

The serializer checks types; `generation_params_resolve` applies the rules of the
model's profile and returns fully resolved parameters (no "auto" left).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import InvalidRequest
from images.families_catalog import CFG, TRUE_CFG
from images.fields import (
    LoraListField,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
    WebhookURLField,
    choice_field,
    quoted_list,
)
from images.models import ImageModel
from images.profiles import MODELS_WITHOUT_FIDELITY, PROFILES, STYLE_TEMPLATES, Profile, model_capabilities

GPT_ONLY = ("background", "output_format", "output_compression", "moderation", "stream", "partial_images")
MAX_SEED = 2**32 - 1


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` (0-based) of a request with seed `seed`: seed + index,
    wrapping past MAX_SEED to 0, so that every image's seed is itself a valid `seed`
    (sent back with n=1 it makes that image again; docs/api.md)."""
    return (seed + index) % (MAX_SEED + 1)


class ExtensionFields(StrictSerializer):
    """Our extensions to every generation shape (not in OpenAI's API; docs/api.md):
    reproducibility (`seed`: image i uses image_seed(seed, i), seed + i), negative
    prompts, `webhook_url` (told of the job's end; issue 24) and `loras` (LoRA
    adapters over the model; issue 23)."""

    seed = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_SEED)
    negative_prompt = StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=2000, trim_whitespace=False
    )
    webhook_url = WebhookURLField()
    loras = LoraListField()


class ImageRequestSerializer(ExtensionFields):
    """Fields shared by generations and edits. Every field nullable: null means the default."""

    prompt = StrictCharField(trim_whitespace=False, allow_blank=True)
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    n = StrictIntegerField(required=False, allow_null=True)
    quality = StrictCharField(required=False, allow_null=True)
    response_format = StrictCharField(required=False, allow_null=True)
    output_format = choice_field("png", "jpeg", "webp")
    output_compression = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=100)
    stream = StrictBooleanField(required=False, allow_null=True)
    partial_images = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=3)
    size = StrictCharField(required=False, allow_null=True)
    background = choice_field("transparent", "opaque", "auto")
    user = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=256)


class GenerationRequestSerializer(ImageRequestSerializer):
    """POST /v1/images/generations."""

    moderation = choice_field("low", "auto")
    style = StrictCharField(required=False, allow_null=True)


@dataclass
class GenerationParams:
    """A resolved request: what the job runs and what the response echoes."""

    model: str
    profile: str
    prompt: str  # as sent by the caller
    model_prompt: str  # exactly what the model receives (revised_prompt)
    negative_prompt: str
    n: int
    size: str
    width: int
    height: int
    quality: str  # resolved, never "auto"
    steps: int
    guidance: float
    seed: int
    response_format: str  # url | b64_json (always b64_json for gpt-image)
    output_format: str  # png | jpeg | webp
    output_compression: int
    background: str  # resolved for gpt-image: opaque | transparent
    moderation: str
    style: str | None
    stream: bool
    partial_images: int
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # LoRA adapters, resolved (issue 23: images.services.loras.ResolvedLora.as_json):
    # [{"name", "path", "scale"}], in request order; [] = the base model.
    loras: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _reject_unsupported(data: dict[str, Any], profile: Profile, model: str) -> None:
    if profile.gpt and data.get("response_format") is not None:
        raise InvalidRequest("Unknown parameter: 'response_format'.", param="response_format", code="unknown_parameter")
    if not profile.gpt:
        for name in GPT_ONLY:
            value = data.get(name)
            if value is None or value is False or value == "auto" or (name == "partial_images" and value == 0):
                continue
            raise InvalidRequest(
                f"'{name}' is only supported for GPT image models, not for '{model}'.",
                param=name,
                code="unsupported_parameter",
            )
    if not profile.style and data.get("style") is not None:
        raise InvalidRequest(
            f"'style' is only supported for dall-e-3 models, not for '{model}'.",
            param="style",
            code="unsupported_parameter",
        )


def generation_params_resolve(
    *, data: dict[str, Any], model: ImageModel, prompt_required: bool = True
) -> GenerationParams:
    """Apply the profile's rules to serializer output; raise InvalidRequest on any breach."""
    profile = PROFILES[model.profile]
    _reject_unsupported(data, profile, model.public_id)

    prompt = data.get("prompt") or ""
    if prompt_required and not prompt.strip():
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if len(prompt) > profile.prompt_max:
        raise InvalidRequest(
            f"Prompt must be length {profile.prompt_max} or less. Your prompt length is {len(prompt)}. "
            "Please reduce your prompt length.",
            param="prompt",
            code="string_above_max_length",
        )
    if "\x00" in prompt:
        raise InvalidRequest("The prompt must not contain NUL characters.", param="prompt", code="invalid_value")

    n = data.get("n")
    n = 1 if n is None else n
    if n < 1:
        raise InvalidRequest(f"{n} is less than the minimum of 1 - 'n'", param="n", code="integer_below_min_value")
    if n > 10:
        raise InvalidRequest(f"{n} is greater than the maximum of 10 - 'n'", param="n", code="integer_above_max_value")
    if n > profile.n_max:
        raise InvalidRequest("You must provide n=1 for this model.", param="n", code="invalid_value")

    size = data.get("size") or "auto"
    if size == "auto" and (profile.gpt or data.get("size") is None):
        size = profile.default_size
    if size not in profile.sizes:
        allowed = profile.sizes + (("auto",) if profile.gpt else ())
        if profile.name == "dall-e-3":
            raise InvalidRequest(
                f"The size '{size}' is not supported by this model. Supported values are: {quoted_list(allowed)}.",
                param="size",
                code="invalid_size",
            )
        raise InvalidRequest(
            f"Invalid value: '{size}'. Supported values are: {quoted_list(allowed)}.",
            param="size",
            code="invalid_value",
        )
    width, height = (int(v) for v in size.split("x"))

    quality = data.get("quality") or "auto"
    if quality == "auto":
        quality = profile.auto_quality
    if quality not in profile.qualities:
        raise InvalidRequest(
            f"Invalid value: '{quality}'. Supported values are: {quoted_list(profile.qualities + ('auto',))}.",
            param="quality",
            code="invalid_value",
        )
    steps = int(model.steps_by_quality.get(quality) or model.steps_by_quality.get("default") or 4)

    response_format = "b64_json"
    if not profile.gpt:
        response_format = data.get("response_format") or "url"
        if response_format not in ("url", "b64_json"):
            raise InvalidRequest(
                f"Invalid value: '{response_format}'. Supported values are: 'url' and 'b64_json'.",
                param="response_format",
                code="invalid_value",
            )

    style = None
    guidance = float(model.guidance)
    model_prompt = prompt
    if profile.style:
        style = data.get("style") or "vivid"
        if style not in STYLE_TEMPLATES:
            raise InvalidRequest(
                f"Invalid value: '{style}'. Supported values are: 'vivid' and 'natural'.",
                param="style",
                code="invalid_value",
            )
        template, factor = STYLE_TEMPLATES[style]
        model_prompt = template.format(prompt=prompt)
        # The factor scales a classifier-free guidance scale; a guidance embedding (FLUX.1-dev)
        # or a step-distilled model's unused value is not a CFG scale, so it stays as set.
        # Unknown families (no capabilities recorded) are treated as CFG, as before.
        if model_capabilities(model).get("guidance", CFG) in (CFG, TRUE_CFG):
            guidance = round(guidance * factor, 3)

    output_format = data.get("output_format") or "png"
    compression = data.get("output_compression")
    compression = 100 if compression is None else compression
    background = data.get("background") or "auto"
    if background == "transparent":
        # No served model produces an alpha channel yet (transparency comes with background
        # removal): refused before any credit is held, naming the parameter.
        raise InvalidRequest(
            f"The model '{model.public_id}' cannot produce transparent backgrounds; use 'opaque' or 'auto'.",
            param="background",
            code="invalid_value",
        )
    if background == "auto":
        background = "opaque"

    stream = bool(data.get("stream"))
    partial_images = data.get("partial_images") or 0

    seed = data.get("seed")
    if seed is None:
        seed = secrets.randbelow(MAX_SEED - 10)

    return GenerationParams(
        model=model.public_id,
        profile=profile.name,
        prompt=prompt,
        model_prompt=model_prompt,
        negative_prompt=data.get("negative_prompt") or "",
        n=n,
        size=size,
        width=width,
        height=height,
        quality=quality,
        steps=steps,
        guidance=guidance,
        seed=seed,
        response_format=response_format,
        output_format=output_format,
        output_compression=compression,
        background=background,
        moderation=data.get("moderation") or "auto",
        style=style,
        stream=stream,
        partial_images=partial_images,
        user=data.get("user"),
    )


class EditRequestSerializer(ImageRequestSerializer):
    """POST /v1/images/edits as multipart (files are read separately). No `moderation`, no `style`."""

    input_fidelity = choice_field("high", "low")


class ImageReferenceSerializer(StrictSerializer):
    """`{"image_url": "data:image/png;base64,..." | "https://..."}` or `{"file_id": ...}` (reference §3)."""

    image_url = StrictCharField(required=False, max_length=70_000_000)
    file_id = StrictCharField(required=False, max_length=200)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if len(attrs) != 1:
            raise InvalidRequest(
                "Each image reference needs exactly one of 'image_url' or 'file_id'.",
                param="images",
                code="invalid_value",
            )
        return attrs


class EditJSONRequestSerializer(EditRequestSerializer):
    """POST /v1/images/edits as JSON (`EditImageBodyJsonParam`, GPT image models only):
    `images` 1..16 references, optional `mask` reference, and `moderation`."""

    images = ImageReferenceSerializer(many=True, allow_empty=False, max_length=16)
    mask = ImageReferenceSerializer(required=False, allow_null=True)
    moderation = choice_field("low", "auto")


class VariationRequestSerializer(StrictSerializer):
    """POST /v1/images/variations (dall-e-2 profile only)."""

    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    n = StrictIntegerField(required=False, allow_null=True)
    response_format = StrictCharField(required=False, allow_null=True)
    size = StrictCharField(required=False, allow_null=True)
    user = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=256)
    seed = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_SEED)
    webhook_url = WebhookURLField()


# How much of the input an edit may change (diffusers' img2img `strength`).
EDIT_STRENGTH = {"low": 0.75, "high": 0.45}
VARIATION_STRENGTH = 0.6


def edit_strength(*, data: dict[str, Any], model: ImageModel) -> float:
    """`input_fidelity` maps to strength: high keeps more of the input (reference §3)."""
    fidelity = data.get("input_fidelity")
    if fidelity is not None:
        profile = PROFILES[model.profile]
        if not profile.input_fidelity or model.public_id.startswith(MODELS_WITHOUT_FIDELITY):
            raise InvalidRequest(
                f"'input_fidelity' is not supported for '{model.public_id}'.",
                param="input_fidelity",
                code="unsupported_parameter",
            )
        return EDIT_STRENGTH[fidelity]
    return EDIT_STRENGTH["low"]
