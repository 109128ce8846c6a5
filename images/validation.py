"""Validation of generation requests, field by field as reference §2 and §5 say.

The serializer checks types; `generation_params_resolve` applies the rules of the
model's profile and returns fully resolved parameters (no "auto" left).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.errors import InvalidRequest
from images.families_catalog import CFG, TRUE_CFG
from images.models import ImageModel
from images.profiles import MODELS_WITHOUT_FIDELITY, PROFILES, STYLE_TEMPLATES, Profile, model_capabilities

GPT_ONLY = ("background", "output_format", "output_compression", "moderation", "stream", "partial_images")
MAX_SEED = 2**32 - 1


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` (0-based) of a request with seed `seed`: seed + index,
    wrapping past MAX_SEED to 0, so that every image's seed is itself a valid `seed`
    (sent back with n=1 it makes that image again; docs/api.md)."""
    return (seed + index) % (MAX_SEED + 1)


_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a decimal number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _invalid_type(field: serializers.Field, expected: str, data: Any) -> InvalidRequest:
    """OpenAI's wording for a value of the wrong JSON type."""
    got = _TYPE_NAMES.get(type(data), "a value of another type")
    name = field.field_name
    return InvalidRequest(
        f"Invalid type for '{name}': expected {expected}, but got {got} instead.", param=name, code="invalid_type"
    )


def _form(field: serializers.Field) -> bool:
    """Multipart and form bodies carry every value as a string: types are coerced there."""
    return bool(field.root.context.get("form")) if field.root is not None else False


class StrictCharField(serializers.CharField):
    """A string, never a number or boolean stringified (JSON types are strict as OpenAI's are)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise _invalid_type(self, "a string", data)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer (no booleans, decimals or strings); in a form body, ASCII digits
    with an optional sign (not `٢` or `２`, which Python's int() would also read)."""

    def to_internal_value(self, data: Any) -> int:
        if _form(self) and isinstance(data, str):
            if not re.fullmatch(r"[+-]?[0-9]+", data.strip()):
                raise _invalid_type(self, "an integer", data)
            return super().to_internal_value(data)
        if isinstance(data, bool) or not isinstance(data, int):
            raise _invalid_type(self, "an integer", data)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean; in a form body, DRF's true/false spellings."""

    def to_internal_value(self, data: Any) -> bool:
        if not _form(self) and not isinstance(data, bool):
            raise _invalid_type(self, "a boolean", data)
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    """One of the listed strings; anything else is OpenAI's `invalid_value`."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise _invalid_type(self, "a string", data)
        if data not in self.choices:
            allowed = _quoted_list(tuple(self.choices))
            raise InvalidRequest(
                f"Invalid value: '{data}'. Supported values are: {allowed}.",
                param=self.field_name,
                code="invalid_value",
            )
        return data


def _choice(*values: str) -> serializers.ChoiceField:
    return StrictChoiceField(choices=values, required=False, allow_null=True)


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not declare, as OpenAI does:
    400 `{"message": "Unknown parameter: 'qualty'.", "param": "qualty", "code": "unknown_parameter"}`
    (a misspelled field must never be charged at the defaults). `ignored_fields` are
    accepted and dropped (fields a vendor's clients send that mean nothing here)."""

    ignored_fields: tuple[str, ...] = ()

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if hasattr(data, "keys"):
            for name in data.keys():
                if name not in self.fields and name not in self.ignored_fields:
                    raise InvalidRequest(f"Unknown parameter: '{name}'.", param=str(name), code="unknown_parameter")
        return super().to_internal_value(data)


WEBHOOK_URL_MAX_LENGTH = 2000


def webhook_url_check(url: str, *, param: str = "webhook_url") -> str:
    """A webhook target as a request may give it (issue 24): an absolute http(s) URL with
    a host, no credentials, at most WEBHOOK_URL_MAX_LENGTH characters. An IP literal that
    is not public (any notation Python's ipaddress reads, IPv4-mapped IPv6 included) is
    refused here unless WEBHOOK_ALLOW_PRIVATE_TARGETS; names are resolved and checked at
    each delivery (core.http_fetch.http_post), where every notation is refused. 400
    `invalid_url` naming `param`."""
    import ipaddress
    from urllib.parse import urlsplit

    from django.conf import settings

    from core.http_fetch import address_connect_target

    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest(f"'{param}' {why}", param=param, code="invalid_url")

    if len(url) > WEBHOOK_URL_MAX_LENGTH:
        raise refuse(f"must be at most {WEBHOOK_URL_MAX_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise refuse("is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not host:
        raise refuse("must be an absolute http or https URL.")
    if parts.username or parts.password:
        raise refuse("must not carry credentials.")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise refuse("must not contain whitespace or control characters.")
    if not settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if host.rstrip(".").lower() == "localhost" or (literal is not None and address_connect_target(literal) is None):
            raise refuse("points at a private, loopback or otherwise non-public address, which is not allowed.")
    return url


class WebhookURLField(StrictCharField):
    """`webhook_url` (extension, issue 24): checked by webhook_url_check."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", not kwargs["required"])
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        return webhook_url_check(super().to_internal_value(data), param=self.field_name)


# Replicate's `Cancel-After` (Go duration style): "30s", "5m", "1h", "1m30s", "1h2m3s", "500ms".
_DURATION = re.compile(r"(?:(\d{1,6})h)?(?:(\d{1,6})m(?!s))?(?:(\d{1,7})s)?(?:(\d{1,9})ms)?")
CANCEL_AFTER_MIN_SECONDS = 1
CANCEL_AFTER_MAX_SECONDS = 7 * 24 * 3600


def cancel_after_parse(raw: str | None) -> float | None:
    """The `Cancel-After` header as seconds (None when absent): hours, minutes, seconds
    and milliseconds in that order, each optional, at least one ("30s", "5m", "1h",
    "1m30s", "1500ms"); from CANCEL_AFTER_MIN_SECONDS up to a week. 400
    `invalid_cancel_after` naming the header otherwise. The job's deadline becomes the
    earlier of this and JOB_DEADLINE_SECONDS (images.services.generation)."""
    if raw is None:
        return None
    value = raw.strip()
    match = _DURATION.fullmatch(value) if value.isascii() else None
    if not value or match is None or not any(match.groups()):
        raise InvalidRequest(
            "'Cancel-After' must be a duration such as '30s', '5m', '1h' or '1m30s'.",
            param="Cancel-After",
            code="invalid_cancel_after",
        )
    hours, minutes, seconds, millis = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds + millis / 1000
    if not CANCEL_AFTER_MIN_SECONDS <= total <= CANCEL_AFTER_MAX_SECONDS:
        raise InvalidRequest(
            f"'Cancel-After' must be from {CANCEL_AFTER_MIN_SECONDS} second to 7 days.",
            param="Cancel-After",
            code="invalid_cancel_after",
        )
    return total


LORA_SCALE_MIN, LORA_SCALE_MAX = -2.0, 2.0


@extend_schema_field(
    {
        "type": "array",
        "maxItems": 3,
        "nullable": True,
        "description": "LoRA adapters over the model (extension; GET /v1/loras lists them; at most "
        "LORA_MAX_PER_REQUEST). Each adapter's surcharge is added to the price per image.",
        "items": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "scale": {"type": "number", "minimum": -2, "maximum": 2, "default": 1},
            },
        },
    }
)
class LoraListField(serializers.Field):
    """`loras` (extension, issue 23): `[{"name": str, "scale": number}, ...]`, at most
    LORA_MAX_PER_REQUEST entries, each name once; `scale` defaults to 1.0 and must be a
    finite number in [-2, 2] (0 = not applied). In a form body (multipart edits) the
    same array as a JSON string. Returns [{"name", "scale": float}]; 400 naming `loras`,
    `loras[i].name` or `loras[i].scale`. Which adapters exist and fit is checked later
    (images.services.loras.loras_resolve)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> Any:
        return value

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        import json
        import math

        from django.conf import settings

        if _form(self) and isinstance(data, str):
            try:
                data = json.loads(data) if data.strip() else []
            except ValueError:
                raise InvalidRequest(
                    '\'loras\' must be a JSON array of {"name", "scale"} objects.', param="loras", code="invalid_type"
                ) from None
        if not isinstance(data, list):
            raise _invalid_type(self, "an array", data)
        limit = settings.LORA_MAX_PER_REQUEST
        if len(data) > limit:
            raise InvalidRequest(
                f"At most {limit} LoRA adapters per request (got {len(data)}).", param="loras", code="invalid_value"
            )
        entries: list[dict[str, Any]] = []
        for index, item in enumerate(data):
            where = f"loras[{index}]"
            if not isinstance(item, dict):
                got = _TYPE_NAMES.get(type(item), "a value of another type")
                raise InvalidRequest(
                    f"Invalid type for '{where}': expected an object, but got {got} instead.",
                    param=where,
                    code="invalid_type",
                )
            for key in item:
                if key not in ("name", "scale"):
                    raise InvalidRequest(
                        f"Unknown parameter: '{where}.{key}'.", param=f"{where}.{key}", code="unknown_parameter"
                    )
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequest(
                    f"'{where}.name' must be the name of a LoRA adapter.", param=f"{where}.name", code="invalid_value"
                )
            if any(entry["name"] == name for entry in entries):
                raise InvalidRequest(
                    f"The LoRA adapter '{name}' is listed twice.", param=f"{where}.name", code="invalid_value"
                )
            scale = item.get("scale", 1.0)
            if (
                isinstance(scale, bool)
                or not isinstance(scale, (int, float))
                or not math.isfinite(scale)
                or not LORA_SCALE_MIN <= scale <= LORA_SCALE_MAX
            ):
                raise InvalidRequest(
                    f"'{where}.scale' must be a number from {LORA_SCALE_MIN:g} to {LORA_SCALE_MAX:g}.",
                    param=f"{where}.scale",
                    code="invalid_value",
                )
            entries.append({"name": name, "scale": float(scale)})
        return entries


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
    output_format = _choice("png", "jpeg", "webp")
    output_compression = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=100)
    stream = StrictBooleanField(required=False, allow_null=True)
    partial_images = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=3)
    size = StrictCharField(required=False, allow_null=True)
    background = _choice("transparent", "opaque", "auto")
    user = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=256)


class GenerationRequestSerializer(ImageRequestSerializer):
    """POST /v1/images/generations."""

    moderation = _choice("low", "auto")
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


def _quoted_list(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1] if len(quoted) > 1 else quoted[0]


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
                f"The size '{size}' is not supported by this model. Supported values are: {_quoted_list(allowed)}.",
                param="size",
                code="invalid_size",
            )
        raise InvalidRequest(
            f"Invalid value: '{size}'. Supported values are: {_quoted_list(allowed)}.",
            param="size",
            code="invalid_value",
        )
    width, height = (int(v) for v in size.split("x"))

    quality = data.get("quality") or "auto"
    if quality == "auto":
        quality = profile.auto_quality
    if quality not in profile.qualities:
        raise InvalidRequest(
            f"Invalid value: '{quality}'. Supported values are: {_quoted_list(profile.qualities + ('auto',))}.",
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

    input_fidelity = _choice("high", "low")


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
    moderation = _choice("low", "auto")


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
