"""Stability AI's v2beta image API on the operator's own models (issue 26 item 2; seed 004's
"Stability" menu). Like every vendor shape (images/vendors.py), each endpoint is a
*mapper* (a multipart request -> a `GenerationRequest`) and a *renderer* around the one
charged flow, `images.charged.ChargedViewSet.charged`: the same generation service, holds,
402s, refunds, Idempotency-Key, rate limits and usage as the OpenAI endpoints.

Endpoints (docs/api.md, "Stability v2beta shape"):

- `POST /v2beta/stable-image/generate/{sd3,core,ultra}`: `prompt`, `negative_prompt`,
  `aspect_ratio` (the served model's allowed size nearest that ratio), `seed` (0 = random),
  `output_format`, `style_preset` (appended to the prompt as "<preset> style"); sd3 takes
  `model` and `mode=image-to-image` with `image` + `strength`, ultra `image` + `strength`.
- `POST /v2beta/stable-image/edit/{inpaint,outpaint,erase}`: inpainting through the
  path's masked edit. The input is letterboxed into a size the model allows and the
  worker crops and scales the result back (images/output_shape.py), so the answer has
  the input's size (outpaint: the input grown by exactly `left`/`right`/`up`/`down`).
- `POST /v2beta/stable-image/edit/{search-and-replace,search-and-recolor}`: one masked
  edit whose mask the worker makes from `search_prompt` / `select_prompt` with the
  operator's text-prompted segmenter (CLIPSeg; images/search_mask.py), grown by
  `grow_mask`, before the inpainting runs: one job, charged once at the generator's price.
- `POST /v2beta/stable-image/edit/remove-background` and `upscale/{fast,conservative,
  creative}`: tool jobs (images/tool_models.py) of the background remover and the
  upscalers, priced by the tool model's row of the endpoint's action (TOOL_SERVICES).
  upscale/fast is the ESRGAN upscaler (4x, no text). conservative and creative are a
  diffusion upscaler (diffusers' StableDiffusionUpscalePipeline, the architecture of
  stabilityai/stable-diffusion-x4-upscaler; `sd-x4-upscaler-tiny` seeded), exactly 4x:
  `prompt` (required) and `negative_prompt` steer it, `seed` seeds it, and `creativity`
  (conservative 0.2-0.5, default 0.35; creative 0.1-0.5, default 0.3) is the noise
  added to the input before it is re-imagined: noise_level = round(creativity x 350),
  the pipeline's max_noise_level (images.tool_models.UPSCALE_MAX_NOISE_LEVEL); creative's
  `style_preset` is appended to the prompt. Their input is 64 px a side at least and
  at most 1,048,576 pixels (UPSCALE_LIMITS; Stability's creative takes up to 1 MP too).
  upscale/creative is asynchronous, as Stability's: 200 `{id}`, then the results poll.
- `POST /v2beta/stable-image/control/{sketch,structure}`: `image`, `prompt`,
  `control_strength` (0-1, default 0.7), `negative_prompt`, `seed`, `output_format`,
  `style_preset`: one text-to-image job of the endpoint's generator at the allowed size
  nearest the image's aspect ratio, steered by a ControlNet tool model on the image's
  Canny edges (sketch) or on the depth estimator's map of it (structure); the worker
  makes the control image (images/control.py). One job, one charge.
- `POST /v2beta/stable-image/control/style`: `image` (the style reference), `prompt`,
  `fidelity` (0-1, default 0.5: the IP-Adapter's scale), `aspect_ratio`,
  `negative_prompt`, `seed`, `output_format`, `style_preset`: a text-to-image job with
  the operator's IP-Adapter tool model, attached for that call only. The tool models
  are the routes of the pseudo-services `control/sketch-controlnet`,
  `control/structure-controlnet`, `control/depth-estimator` and `control/style-adapter`.
- `GET /v2beta/results/{id}`: a job submitted with `Prefer: respond-async` (202 `{id}`):
  202 `{id, status: "in-progress"}` while it runs, then the image.
- `GET /v1/user/balance`: `{"credits": float}`, the tenant's available credits in the
  operator's unit.

Answers: `Accept: image/*` (the default) gives the image bytes with `finish-reason`
and `seed` headers; `Accept: application/json` gives `{image (base64), finish_reason,
seed}`. Every error is Stability's `{id, name, errors: [...]}` (`stability_error_body`),
with Stability's statuses: 400, 401, 402 (no credits), 403 (`content_moderation`), 404,
413, 429, 5xx.

Which own model serves each endpoint (and each sd3 `model` value) is the operator's
`StabilityRoute` rows (the admin), else `DEFAULT_ROUTES`; the served model's price rows
price it (control/*: the generator's row of the endpoint's action, CONTROL_SERVICES).
Any other path under /v2beta is a 404 in the envelope.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from PIL import Image, ImageFilter, ImageStat
from rest_framework import serializers, viewsets
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.ratelimit import caller_from_request
from billing.selectors import credits_available
from core.errors import InvalidRequest, NotFound, PermissionDeniedError
from images import selectors, uploads
from images.charged import ChargedViewSet, Renderer, tenant_job
from images.errors import job_error
from images.fields import StrictCharField, StrictChoiceField, StrictIntegerField, StrictSerializer
from images.files import image_read
from images.mappers import form_fields, validated
from images.models import ImageModel, Job, StabilityRoute
from images.profiles import PROFILES, capabilities_check
from images.services.generation import GenerationRequest
from images.services.inputs import InputImage
from images.services.tools import tool_generation_request

# ---- The operator's mapping ------------------------------------------------------------------

# (service, `model` value) -> the own model serving it when no StabilityRoute row says
# otherwise. "" is the endpoint's default; sd3's older `model` values go to their 3.5 heirs.
SEGMENTER_SERVICE = "edit/segmenter"
SKETCH_CONTROLNET_SERVICE = "control/sketch-controlnet"  # (a canny ControlNet)
STRUCTURE_CONTROLNET_SERVICE = "control/structure-controlnet"  # (a depth ControlNet)
DEPTH_ESTIMATOR_SERVICE = "control/depth-estimator"  # (structure's preprocessor)
STYLE_ADAPTER_SERVICE = "control/style-adapter"  # (an IP-Adapter)
DEFAULT_ROUTES: dict[tuple[str, str], str] = {
    ("generate/sd3", ""): "sd3.5-large",
    ("generate/sd3", "sd3.5-large"): "sd3.5-large",
    ("generate/sd3", "sd3.5-large-turbo"): "sd3.5-large-turbo",
    ("generate/sd3", "sd3.5-medium"): "sd3.5-medium",
    ("generate/sd3", "sd3.5-flash"): "sd3.5-flash",
    ("generate/sd3", "sd3-large"): "sd3.5-large",
    ("generate/sd3", "sd3-large-turbo"): "sd3.5-large-turbo",
    ("generate/sd3", "sd3-medium"): "sd3.5-medium",
    ("generate/core", ""): "stable-image-core",
    ("generate/ultra", ""): "stable-image-ultra",
    ("edit/inpaint", ""): "stable-image-inpaint",
    ("edit/outpaint", ""): "stable-image-outpaint",
    ("edit/erase", ""): "stable-image-erase",
    ("edit/search-and-replace", ""): "stable-image-search-replace",
    ("edit/search-and-recolor", ""): "stable-image-search-recolor",
    # The text-prompted segmenter that makes both search endpoints' masks (a tool model).
    (SEGMENTER_SERVICE, ""): "clipseg-tiny",
    # Tool models (issue 26 item 1; images/tool_models.py SEEDED_TOOLS).
    ("edit/remove-background", ""): "segformer-tiny-rmbg",
    ("upscale/fast", ""): "esrgan-tiny-x4",
    ("upscale/conservative", ""): "sd-x4-upscaler-tiny",  # (a diffusion upscaler, prompted)
    ("upscale/creative", ""): "sd-x4-upscaler-tiny",
    # control/*: one generator, with control tool models (images/control.py) chosen by
    # these pseudo-services (like SEGMENTER_SERVICE).
    ("control/sketch", ""): "stable-image-control",
    ("control/structure", ""): "stable-image-control",
    ("control/style", ""): "stable-image-control",
    (SKETCH_CONTROLNET_SERVICE, ""): "controlnet-tiny-canny",
    (STRUCTURE_CONTROLNET_SERVICE, ""): "controlnet-tiny-depth",
    (DEPTH_ESTIMATOR_SERVICE, ""): "dpt-tiny-depth",
    (STYLE_ADAPTER_SERVICE, ""): "ip-adapter-tiny",
}

# The own models `make setup` seeds for them (demo weights, the gpt-image profile: its
# sizes, output formats and unsquare masked edits fit these endpoints), with one price
# row each for every kind and size, in credits per image (1 credit ~ US$0.001, so ten
# times Stability's list price in its credits of US$0.01: Core 3, Ultra 8, SD3.5 Large 6.5...).
STABILITY_MODELS: dict[str, int] = {
    "stable-image-ultra": 80,
    "stable-image-core": 30,
    "sd3.5-large": 65,
    "sd3.5-large-turbo": 40,
    "sd3.5-medium": 35,
    "sd3.5-flash": 25,
    "stable-image-inpaint": 30,
    "stable-image-outpaint": 40,
    "stable-image-erase": 30,
    "stable-image-search-replace": 40,
    "stable-image-search-recolor": 50,
    "stable-image-control": 30,
}

# control/*: service -> (the price row kind of its action on the served generator, seeded
# credits per image: ten times Stability's list price as above: Sketch 3, Structure 3,
# Style 4). The generator's own row (30) prices any other use of it.
CONTROL_SERVICES: dict[str, tuple[str, int]] = {
    "control/sketch": ("st_ctrl_sketch", 30),
    "control/structure": ("st_ctrl_struct", 30),
    "control/style": ("st_ctrl_style", 40),
}

# Endpoints served by a tool model: service -> (the job kind, the price row kind of its
# own action on that model, seeded credits per image: ten times Stability's list price as
# above: Fast Upscaler 1, Conservative 25, Creative 25, Remove Background 2). Without a
# row of the action's kind the tool model's row of the job kind prices it
# (billing.services.price_quote's `action`). Price.kind holds 16 characters.
TOOL_SERVICES: dict[str, tuple[str, str, int]] = {
    "upscale/fast": (Job.Kind.UPSCALE, "st_upscale_fast", 10),
    "upscale/conservative": (Job.Kind.UPSCALE, "st_upscale_cons", 250),
    "upscale/creative": (Job.Kind.UPSCALE, "st_upscale_crea", 250),
    "edit/remove-background": (Job.Kind.REMOVE_BACKGROUND, "st_remove_bg", 20),
}


@transaction.atomic
def stability_seed(*, source: str, steps_by_quality: dict[str, int], guidance: float) -> int:
    """Create the missing seeded models of STABILITY_MODELS (on `source`, the demo model's
    folder, with its steps and guidance; price rows included) and a StabilityRoute row for every
    DEFAULT_ROUTES entry without one (the tool models must be seeded first:
    images.tool_models.tool_models_seed); a route made now to a tool model (TOOL_SERVICES)
    or of a control endpoint (CONTROL_SERVICES) gets its action's price row when the
    model has none of that kind. Never
    overwrites the operator's edits. Returns how many models were created. Called by
    images.seed.registry_seed (`make setup`)."""
    from billing.models import Price

    created = 0
    for public_id, credits in STABILITY_MODELS.items():
        model, was_created = ImageModel.objects.get_or_create(
            public_id=public_id,
            defaults={
                "profile": ImageModel.Profile.GPT_IMAGE,
                "source": source,
                "steps_by_quality": steps_by_quality,
                "guidance": guidance,
                "owned_by": "platform",
                "queue": "gpu",
            },
        )
        if was_created:
            created += 1
            Price.objects.create(model=model, kind="", size="", quality="", credits_per_image=credits)
    models = {m.public_id: m for m in ImageModel.objects.filter(public_id__in=set(DEFAULT_ROUTES.values()))}
    for (service, value), public_id in DEFAULT_ROUTES.items():
        if public_id in models:
            _, route_created = StabilityRoute.objects.get_or_create(
                service=service, model_value=value, defaults={"image_model": models[public_id]}
            )
            action = None
            if route_created and service in TOOL_SERVICES:
                _, action, credits = TOOL_SERVICES[service]
            elif route_created and service in CONTROL_SERVICES:
                action, credits = CONTROL_SERVICES[service]
            if action is not None:
                Price.objects.get_or_create(
                    model=models[public_id], kind=action, size="", quality="", defaults={"credits_per_image": credits}
                )
    return created


def stability_route_resolve(*, service: str, model_value: str = "") -> str:
    """The public id of the own model serving `service` (and `model_value`): the
    operator's StabilityRoute row, else DEFAULT_ROUTES. 400 naming `model` for a value
    with neither, or one whose row the operator disabled."""
    row = StabilityRoute.objects.filter(service=service, model_value=model_value).select_related("image_model").first()
    if row is not None and row.enabled:
        return row.image_model.public_id
    default = DEFAULT_ROUTES.get((service, model_value))
    if row is None and default is not None:
        return default
    offered = sorted(
        {value for (svc, value) in DEFAULT_ROUTES if svc == service and value}
        | set(
            StabilityRoute.objects.filter(service=service, enabled=True)
            .exclude(model_value="")
            .values_list("model_value", flat=True)
        )
    )
    raise InvalidRequest(
        f"model: '{model_value}' is not available; use one of: {', '.join(offered) or '(none)'}.",
        param="model",
        code="model_not_found",
    )


# ---- Request fields --------------------------------------------------------------------------

ASPECT_RATIOS = {
    "16:9": 16 / 9,
    "1:1": 1.0,
    "21:9": 21 / 9,
    "2:3": 2 / 3,
    "3:2": 3 / 2,
    "4:5": 4 / 5,
    "5:4": 5 / 4,
    "9:16": 9 / 16,
    "9:21": 9 / 21,
}
STYLE_PRESETS = (
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "modeling-compound",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "tile-texture",
)
MAX_SEED = 4_294_967_294  # Stability's range: 0 (random) to 4294967294
PROMPT_MAX = 10_000
# Stability's input limits: 10 MiB per request, at least 64 px a side, at most
# 9,437,184 pixels (inpaint, outpaint, erase and image-to-image).
MAX_INPUT_BYTES = 10 * 1024 * 1024
MIN_SIDE = 64
MAX_INPUT_PIXELS = 9_437_184
MAX_OUTPAINT = 2000  # pixels per side
# Erase has no prompt: the masked area is inpainted with this neutral one.
ERASE_PROMPT = "empty background, seamless continuation of the surrounding scene"
# Outpaint's prompt is optional: without one the new area continues the image.
OUTPAINT_PROMPT = "seamless continuation of the scene"
# A masked area is regenerated whole (diffusers' strength 1); what is outside it is kept.
INPAINT_STRENGTH = 1.0
# search-and-recolor keeps some of the found object's structure (the new colours are its
# prompt): its mask is regenerated at this img2img strength.
RECOLOR_STRENGTH = 0.85
# What a search looks for: CLIPSeg reads at most 77 tokens, so a short phrase.
SEARCH_PROMPT_MAX = 300
SEARCH_GROW_DEFAULT = 3  # Stability's grow_mask default on the search endpoints
# Input limits per upscale (Stability's: fast 32-1536 px a side and 1,024-1,048,576
# pixels; creative 4,096-1,048,576 pixels; conservative 4,096-9,437,184, here at most
# the upscaler's 1,048,576: images.tool_models.UPSCALE_MAX_PIXELS).
# service -> (least side, most side, least pixels, most pixels)
# Stability's creativity default per prompted upscale (conservative, creative).
CREATIVITY_DEFAULTS = {"upscale/conservative": 0.35, "upscale/creative": 0.3}
UPSCALE_LIMITS = {
    "upscale/fast": (32, 1536, 1024, 1_048_576),
    "upscale/conservative": (MIN_SIDE, 4096, 4096, 1_048_576),
    "upscale/creative": (MIN_SIDE, 4096, 4096, 1_048_576),
}


def _choice(*values: str, required: bool = False) -> StrictChoiceField:
    return StrictChoiceField(choices=values, required=required)


def _unit_float(**kwargs: Any) -> serializers.FloatField:
    return serializers.FloatField(min_value=0.0, max_value=1.0, **kwargs)


class _Common(StrictSerializer):
    seed = StrictIntegerField(required=False, min_value=0, max_value=MAX_SEED)
    output_format = _choice("png", "jpeg", "webp")


class _Prompted(_Common):
    prompt = StrictCharField(max_length=PROMPT_MAX, trim_whitespace=False)
    negative_prompt = StrictCharField(required=False, allow_blank=True, max_length=PROMPT_MAX, trim_whitespace=False)
    style_preset = StrictChoiceField(choices=STYLE_PRESETS, required=False)


class CoreRequestSerializer(_Prompted):
    """generate/core: prompt (required), aspect_ratio, negative_prompt, seed, style_preset, output_format."""

    aspect_ratio = StrictChoiceField(choices=tuple(ASPECT_RATIOS), required=False)


class UltraRequestSerializer(CoreRequestSerializer):
    """generate/ultra: core's fields, plus `image` (a file part) with `strength` for image-to-image."""

    strength = _unit_float(required=False)


class SD3RequestSerializer(UltraRequestSerializer):
    """generate/sd3: `model` (sd3.5-large, ...), `mode` (text-to-image | image-to-image),
    `cfg_scale` (accepted; the served model's own guidance applies)."""

    model = StrictCharField(required=False, allow_blank=True, max_length=100)
    mode = _choice("text-to-image", "image-to-image")
    cfg_scale = serializers.FloatField(required=False, min_value=1.0, max_value=10.0)
    output_format = _choice("png", "jpeg")


class InpaintRequestSerializer(_Prompted):
    """edit/inpaint: `image` and `mask` file parts (no mask: the image's alpha channel),
    prompt, negative_prompt, grow_mask (pixels), seed, style_preset, output_format."""

    grow_mask = StrictIntegerField(required=False, min_value=0, max_value=100)


class OutpaintRequestSerializer(_Common):
    """edit/outpaint: `image`, left/right/up/down (pixels, at least one > 0), an optional
    prompt, creativity (accepted; the new area is always generated whole), style_preset."""

    prompt = StrictCharField(required=False, allow_blank=True, max_length=PROMPT_MAX, trim_whitespace=False)
    negative_prompt = StrictCharField(required=False, allow_blank=True, max_length=PROMPT_MAX, trim_whitespace=False)
    style_preset = StrictChoiceField(choices=STYLE_PRESETS, required=False)
    left = StrictIntegerField(required=False, min_value=0, max_value=MAX_OUTPAINT)
    right = StrictIntegerField(required=False, min_value=0, max_value=MAX_OUTPAINT)
    up = StrictIntegerField(required=False, min_value=0, max_value=MAX_OUTPAINT)
    down = StrictIntegerField(required=False, min_value=0, max_value=MAX_OUTPAINT)
    creativity = _unit_float(required=False)


class EraseRequestSerializer(_Common):
    """edit/erase: `image`, `mask` (or the image's alpha channel), grow_mask, seed, output_format."""

    grow_mask = StrictIntegerField(required=False, min_value=0, max_value=20)


class SearchReplaceRequestSerializer(_Prompted):
    """edit/search-and-replace: `image`, prompt (what to put there), search_prompt (what
    to find), negative_prompt, grow_mask (0-20, default 3), seed, style_preset, output_format."""

    search_prompt = StrictCharField(max_length=SEARCH_PROMPT_MAX, trim_whitespace=False)
    grow_mask = StrictIntegerField(required=False, min_value=0, max_value=20)


class SearchRecolorRequestSerializer(_Prompted):
    """edit/search-and-recolor: `image`, prompt (the new colours), select_prompt (what to
    find), negative_prompt, grow_mask (0-20, default 3), seed, style_preset, output_format."""

    select_prompt = StrictCharField(max_length=SEARCH_PROMPT_MAX, trim_whitespace=False)
    grow_mask = StrictIntegerField(required=False, min_value=0, max_value=20)


class RemoveBackgroundRequestSerializer(StrictSerializer):
    """edit/remove-background: `image`, output_format (png or webp: both keep the alpha)."""

    output_format = _choice("png", "webp")


class FastUpscaleRequestSerializer(StrictSerializer):
    """upscale/fast: `image`, output_format."""

    output_format = _choice("png", "jpeg", "webp")


class ConservativeUpscaleRequestSerializer(_Common):
    """upscale/conservative: `image`, prompt (required), negative_prompt, seed,
    output_format, creativity (0.2-0.5, default CREATIVITY_DEFAULTS'; the diffusion
    upscaler's noise level, module docstring)."""

    prompt = StrictCharField(max_length=PROMPT_MAX, trim_whitespace=False)
    negative_prompt = StrictCharField(required=False, allow_blank=True, max_length=PROMPT_MAX, trim_whitespace=False)
    creativity = serializers.FloatField(required=False, min_value=0.2, max_value=0.5)


class CreativeUpscaleRequestSerializer(ConservativeUpscaleRequestSerializer):
    """upscale/creative: conservative's fields with creativity 0.1-0.5 and style_preset
    (appended to the prompt, as on the generate endpoints)."""

    creativity = serializers.FloatField(required=False, min_value=0.1, max_value=0.5)
    style_preset = StrictChoiceField(choices=STYLE_PRESETS, required=False)


CONTROL_STRENGTH_DEFAULT = 0.7  # Stability's control_strength default (sketch, structure)
FIDELITY_DEFAULT = 0.5  # Stability's fidelity default (style)


class ControlRequestSerializer(_Prompted):
    """control/sketch and control/structure: `image` (required), prompt (required),
    control_strength (0-1, default 0.7: how much the image's edges / depth steer the
    result), negative_prompt, seed, style_preset, output_format."""

    control_strength = _unit_float(required=False)


class StyleRequestSerializer(_Prompted):
    """control/style: `image` (the style reference, required), prompt (required),
    fidelity (0-1, default 0.5: how much the output looks like the reference's style),
    aspect_ratio, negative_prompt, seed, style_preset, output_format."""

    fidelity = _unit_float(required=False)
    aspect_ratio = StrictChoiceField(choices=tuple(ASPECT_RATIOS), required=False)


# ---- Mapping helpers -------------------------------------------------------------------------


def nearest_size(sizes: tuple[str, ...], ratio: float) -> tuple[int, int]:
    """The size of `sizes` whose aspect ratio is nearest `ratio` (on a log scale, so
    2:1 and 1:2 are as far from 1:1), the one nearest a megapixel on a tie."""

    def distance(size: str) -> tuple[float, int]:
        width, height = (int(v) for v in size.split("x"))
        return abs(math.log(width / height / ratio)), abs(width * height - 1024 * 1024)

    width, height = (int(v) for v in min(sizes, key=distance).split("x"))
    return width, height


def _served(public_id: str) -> ImageModel | None:
    return selectors.image_model_get(public_id=public_id)


def _styled(prompt: str, preset: str | None) -> str:
    """`style_preset` as words appended to the prompt (the served model has no presets)."""
    return f"{prompt}, {preset.replace('-', ' ')} style" if preset else prompt


def _seed(fields: dict[str, Any]) -> int | None:
    seed = fields.get("seed")
    return seed or None  # 0: random, as Stability's


def _output_format(fields: dict[str, Any], model: ImageModel | None) -> str | None:
    """Passed to the path only where the served model's profile takes it (gpt-image, as
    the seeded ones); another profile stores PNG and the answer is PNG."""
    if model is not None and PROFILES[model.profile].gpt:
        return fields.get("output_format")
    return None


def _prompted_fields(fields: dict[str, Any], public_id: str, model: ImageModel | None) -> dict[str, Any]:
    """The path's fields every prompted Stability endpoint sends: the served model, the
    prompt with its `style_preset`, the negative prompt, the seed and the output format."""
    return {
        "model": public_id,
        "prompt": _styled(fields["prompt"], fields.get("style_preset")),
        "negative_prompt": fields.get("negative_prompt") or None,
        "seed": _seed(fields),
        "output_format": _output_format(fields, model),
    }


def _upload(request: Request, name: str, *, required: bool) -> Image.Image | None:
    """A file part decoded, after Stability's limits are checked from its header:
    10 MiB (413), PNG/JPEG/WebP, 64 px a side at least, 9,437,184 pixels at most (400)."""
    checked = _upload_bytes(request, name, required=required)
    if checked is None:
        return None
    data, header = checked
    image = uploads.image_open(data, param=name, max_bytes=MAX_INPUT_BYTES, formats=INPUT_FORMATS)
    image.info["format"] = header.info["format"]
    return image


INPUT_FORMATS = ("png", "jpeg", "webp")


def _upload_bytes(
    request: Request,
    name: str,
    *,
    required: bool,
    min_side: int = MIN_SIDE,
    max_side: int | None = None,
    min_pixels: int = 0,
    max_pixels: int = MAX_INPUT_PIXELS,
) -> tuple[bytes, Image.Image] | None:
    """A file part's bytes and its lazily opened header, checked as `_upload` says (the
    side and pixel limits per endpoint); nothing decoded."""
    files = request.FILES.getlist(name)
    if not files:
        if required:
            raise InvalidRequest(f"{name}: is required.", param=name, code="missing_required_parameter")
        return None
    if len(files) > 1:
        raise InvalidRequest(f"{name}: only one file may be sent.", param=name, code="duplicate_parameter")
    data = files[0].read(MAX_INPUT_BYTES + 1)
    header = uploads.image_header(data, param=name, max_bytes=MAX_INPUT_BYTES, formats=INPUT_FORMATS)
    pixels = header.width * header.height
    if (
        min(header.size) < min_side
        or (max_side is not None and max(header.size) > max_side)
        or not min_pixels <= pixels <= max_pixels
    ):
        sides = f"between {min_side} and {max_side}" if max_side else f"at least {min_side}"
        raise InvalidRequest(
            f"{name}: each side must be {sides} pixels and the image {min_pixels or 1} to {max_pixels} "
            f"pixels ({header.width}x{header.height} was sent).",
            param=name,
            code="invalid_image",
        )
    return data, header


def _repaint_map(image: Image.Image, mask: Image.Image | None, *, grow: int) -> Image.Image:
    """Where to regenerate, as an L image of the image's size (255 = regenerate): the
    mask's light pixels (Stability: white = full strength, black = keep; resized to the
    image when it differs), else the image's transparent pixels. `grow` widens it by that
    many pixels each way. 400 naming `mask` when there is neither."""
    if mask is not None:
        repaint = mask.convert("L")
        if repaint.size != image.size:
            repaint = repaint.resize(image.size, Image.Resampling.BILINEAR)
    elif uploads.has_alpha(image):
        repaint = image.convert("RGBA").getchannel("A").point(lambda a: 255 - a)
    else:
        raise InvalidRequest(
            "mask: is required when the image has no alpha channel (transparent pixels mark the area to change).",
            param="mask",
            code="missing_required_parameter",
        )
    repaint = repaint.point(lambda v: 255 if v >= 128 else 0)
    if grow:
        # A box blur spreads each white pixel exactly `grow` pixels: anything it touched is grown.
        repaint = repaint.filter(ImageFilter.BoxBlur(grow)).point(lambda v: 255 if v > 0 else 0)
    return repaint


def _png(image: Image.Image, name: str) -> ContentFile:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ContentFile(buffer.getvalue(), name=name)


def _letterboxed(
    canvas: Image.Image, repaint: Image.Image | None, *, model: ImageModel | None
) -> tuple[str | None, list[InputImage], InputImage | None, list[int]]:
    """The canvas scaled (aspect kept) and centred in the size the served model allows
    nearest its aspect ratio, padded with its mean colour; the repaint map the same way,
    as the path's mask (OpenAI's: transparent = edit; the padding is kept). Returns the
    size, the image and mask inputs, and the canvas's box in that size (for the worker to
    crop back: images/output_shape.py). Without a served model (the path refuses it) the
    canvas goes as it is."""
    if model is None:
        return None, [InputImage(param="image", upload=_png(canvas, "image.png"))], None, [0, 0, *canvas.size]
    width, height = nearest_size(PROFILES[model.profile].sizes, canvas.width / canvas.height)
    scale = min(width / canvas.width, height / canvas.height)
    inner = (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale)))
    left, top = (width - inner[0]) // 2, (height - inner[1]) // 2
    fill = tuple(int(v) for v in ImageStat.Stat(canvas.convert("RGB")).mean)
    init = Image.new("RGB", (width, height), fill)
    init.paste(canvas.convert("RGB").resize(inner, Image.Resampling.LANCZOS), (left, top))
    mask_input = None
    if repaint is not None:
        keep = Image.new("L", (width, height), 255)  # alpha 255 = kept
        keep.paste(repaint.resize(inner, Image.Resampling.NEAREST).point(lambda v: 0 if v else 255), (left, top))
        mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
        mask.putalpha(keep)
        mask_input = InputImage(param="mask", upload=_png(mask, "mask.png"))
    box = [left, top, left + inner[0], top + inner[1]]
    return f"{width}x{height}", [InputImage(param="image", upload=_png(init, "image.png"))], mask_input, box


def _fields(request: Request, serializer, *, files: tuple[str, ...]) -> dict[str, Any]:
    form = hasattr(request.data, "lists")
    return validated(serializer, form_fields(request, files=files) if form else request.data, form=form)


def _generate_mapper(service: str, serializer, *, takes_image: bool):
    endpoint = f"/v2beta/stable-image/{service}"

    def mapper(request: Request) -> GenerationRequest:
        fields = _fields(request, serializer, files=("image",) if takes_image else ())
        public_id = stability_route_resolve(service=service, model_value=fields.get("model") or "")
        model = _served(public_id)
        out = _prompted_fields(fields, public_id, model)
        image = _upload(request, "image", required=False) if takes_image else None
        mode = fields.get("mode")
        if mode == "image-to-image" and image is None:
            raise InvalidRequest(
                "image: is required in image-to-image mode.", param="image", code="missing_required_parameter"
            )
        if image is not None and mode == "text-to-image":
            raise InvalidRequest("image: is not allowed in text-to-image mode.", param="image", code="invalid_value")
        if image is None:
            if fields.get("strength") is not None:
                raise InvalidRequest("strength: is only allowed with an image.", param="strength", code="invalid_value")
            if model is not None:
                width, height = nearest_size(
                    PROFILES[model.profile].sizes, ASPECT_RATIOS[fields.get("aspect_ratio") or "1:1"]
                )
                out["size"] = f"{width}x{height}"
            return GenerationRequest(endpoint=endpoint, fields=out)
        if fields.get("strength") is None:
            raise InvalidRequest(
                "strength: is required with an image.", param="strength", code="missing_required_parameter"
            )
        if fields.get("aspect_ratio"):
            raise InvalidRequest(
                "aspect_ratio: is not allowed with an image (the image's own is kept).",
                param="aspect_ratio",
                code="invalid_value",
            )
        size, images, _, box = _letterboxed(image, None, model=model)
        out["size"] = size
        return GenerationRequest(
            endpoint=endpoint,
            kind=Job.Kind.EDIT,
            fields=out,
            images=images,
            # diffusers' strength must be above 0; Stability's 0 (keep the image) is its least.
            strength=max(0.05, float(fields["strength"])),
            output={"box": box},  # the answer keeps the input's aspect ratio
        )

    return mapper


def _edit_request(
    *, service: str, fields: dict[str, Any], canvas: Image.Image, repaint: Image.Image, prompt: str
) -> GenerationRequest:
    public_id = stability_route_resolve(service=service)
    model = _served(public_id)
    size, images, mask, box = _letterboxed(canvas, repaint, model=model)
    out = {
        "model": public_id,
        "prompt": prompt,
        "negative_prompt": fields.get("negative_prompt") or None,
        "seed": _seed(fields),
        "output_format": _output_format(fields, model),
        "size": size,
    }
    return GenerationRequest(
        endpoint=f"/v2beta/stable-image/{service}",
        kind=Job.Kind.EDIT,
        fields=out,
        images=images,
        mask=mask,
        strength=INPAINT_STRENGTH,
        output={"keep_unmasked": True, "box": box, "size": list(canvas.size)},
    )


def inpaint_mapper(request: Request) -> GenerationRequest:
    fields = _fields(request, InpaintRequestSerializer, files=("image", "mask"))
    image = _upload(request, "image", required=True)
    repaint = _repaint_map(image, _upload(request, "mask", required=False), grow=fields.get("grow_mask", 5))
    prompt = _styled(fields["prompt"], fields.get("style_preset"))
    return _edit_request(service="edit/inpaint", fields=fields, canvas=image, repaint=repaint, prompt=prompt)


def erase_mapper(request: Request) -> GenerationRequest:
    fields = _fields(request, EraseRequestSerializer, files=("image", "mask"))
    image = _upload(request, "image", required=True)
    repaint = _repaint_map(image, _upload(request, "mask", required=False), grow=fields.get("grow_mask", 5))
    return _edit_request(service="edit/erase", fields=fields, canvas=image, repaint=repaint, prompt=ERASE_PROMPT)


def outpaint_mapper(request: Request) -> GenerationRequest:
    """The canvas grows by exactly left/right/up/down pixels; the new area (filled with
    the image's mean colour) is the mask, regenerated by the inpainting path."""
    fields = _fields(request, OutpaintRequestSerializer, files=("image",))
    margins = {side: fields.get(side) or 0 for side in ("left", "right", "up", "down")}
    if not any(margins.values()):
        raise InvalidRequest(
            "left, right, up, down: at least one must be greater than 0.", param="left", code="invalid_value"
        )
    image = _upload(request, "image", required=True)
    width = image.width + margins["left"] + margins["right"]
    height = image.height + margins["up"] + margins["down"]
    if max(width, height) > uploads.MAX_SIDE:
        raise InvalidRequest(
            f"left, right, up, down: the canvas would be {width}x{height}; at most {uploads.MAX_SIDE} pixels a side.",
            param="left",
            code="invalid_value",
        )
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in ImageStat.Stat(image.convert("RGB")).mean))
    canvas.paste(image.convert("RGB"), (margins["left"], margins["up"]))
    repaint = Image.new("L", (width, height), 255)
    repaint.paste(0, (margins["left"], margins["up"], margins["left"] + image.width, margins["up"] + image.height))
    prompt = _styled(fields.get("prompt") or OUTPAINT_PROMPT, fields.get("style_preset"))
    return _edit_request(service="edit/outpaint", fields=fields, canvas=canvas, repaint=repaint, prompt=prompt)


def _search_mapper(service: str, serializer, *, text_field: str, strength: float):
    """search-and-replace (`search_prompt`) and search-and-recolor (`select_prompt`): one
    inpainting job on the endpoint's generator whose mask the worker makes from the text
    with the operator's segmenter (images/search_mask.py), grown by `grow_mask`; charged
    once, at the generator's price rows."""
    endpoint = f"/v2beta/stable-image/{service}"

    def mapper(request: Request) -> GenerationRequest:
        fields = _fields(request, serializer, files=("image",))
        text = fields[text_field].strip()
        if not text:
            raise InvalidRequest(f"{text_field}: cannot be blank.", param=text_field, code="invalid_value")
        image = _upload(request, "image", required=True)
        segmenter_id = stability_route_resolve(service=SEGMENTER_SERVICE)
        segmenter = _served(segmenter_id)
        if segmenter is None or segmenter.kind != ImageModel.Kind.SEGMENTER:
            raise InvalidRequest(
                f"{text_field}: no text-prompted segmenter is installed; contact your platform operator.",
                param=text_field,
                code="model_not_found",
            )
        public_id = stability_route_resolve(service=service)
        model = _served(public_id)
        if model is not None:  # (the path itself refuses a missing model, naming it)
            capabilities_check(model=model, kind=Job.Kind.EDIT, masked=True, fields={})
        size, images, _, box = _letterboxed(image, None, model=model)
        scale = (box[2] - box[0]) / image.width  # grow_mask is in the caller's pixels
        grow = fields.get("grow_mask")
        out = {**_prompted_fields(fields, public_id, model), "size": size}
        return GenerationRequest(
            endpoint=endpoint,
            kind=Job.Kind.EDIT,
            fields=out,
            images=images,
            strength=strength,
            output={"keep_unmasked": True, "box": box, "size": list(image.size)},
            mask_from={
                "segmenter": segmenter_id,
                "text": text,
                "grow": round((SEARCH_GROW_DEFAULT if grow is None else grow) * scale),
            },
        )

    return mapper


def _tool_mapper(service: str, serializer):
    """An endpoint served by a tool model (TOOL_SERVICES): its job of the tool's kind on
    the caller's image as sent (checked against the endpoint's limits, not decoded
    here), priced by the tool model's row of the endpoint's action."""
    endpoint = f"/v2beta/stable-image/{service}"
    kind, action, _ = TOOL_SERVICES[service]
    min_side, max_side, min_pixels, max_pixels = UPSCALE_LIMITS.get(service, (MIN_SIDE, None, 0, MAX_INPUT_PIXELS))

    def mapper(request: Request) -> GenerationRequest:
        fields = _fields(request, serializer, files=("image",))
        data, header = _upload_bytes(
            request,
            "image",
            required=True,
            min_side=min_side,
            max_side=max_side,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        upload = ContentFile(data, name=f"image.{header.info['format']}")
        extra: dict[str, Any] = {}
        if service in CREATIVITY_DEFAULTS:  # (a prompted upscale: images/tool_models.py)
            creativity = fields.get("creativity")
            extra = {
                "prompt": _styled(fields["prompt"], fields.get("style_preset")),
                "negative_prompt": fields.get("negative_prompt") or "",
                "creativity": CREATIVITY_DEFAULTS[service] if creativity is None else creativity,
            }
        return tool_generation_request(
            endpoint=endpoint,
            kind=kind,
            image=InputImage(param="image", upload=upload),
            model=stability_route_resolve(service=service),
            fields={"seed": _seed(fields), "output_format": fields.get("output_format"), **extra},
            price_action=action,
        )

    return mapper


def _control_tool(service: str, kind: str, param: str, label: str) -> str:
    """The public id of the control tool model routed to `service` (a pseudo-service),
    checked to be installed and of `kind`: 400 naming `param` otherwise."""
    public_id = stability_route_resolve(service=service)
    model = _served(public_id)
    if model is None or model.kind != kind:
        raise InvalidRequest(
            f"{param}: no {label} is installed; contact your platform operator.",
            param=param,
            code="model_not_found",
        )
    return public_id


def _control_mapper(service: str):
    """control/sketch (a canny ControlNet on the image's edges) and control/structure (a
    depth ControlNet on the depth estimator's map): one text-to-image job of the
    endpoint's generator at the allowed size nearest the image's aspect ratio, the image
    (resized to it) its control image, `control_strength` the ControlNet's scale; priced
    by the generator's row of the endpoint's action (CONTROL_SERVICES)."""
    endpoint = f"/v2beta/stable-image/{service}"
    sketch = service == "control/sketch"

    def mapper(request: Request) -> GenerationRequest:
        fields = _fields(request, ControlRequestSerializer, files=("image",))
        image = _upload(request, "image", required=True)
        controlnet = _control_tool(
            SKETCH_CONTROLNET_SERVICE if sketch else STRUCTURE_CONTROLNET_SERVICE,
            ImageModel.Kind.CONTROLNET,
            "image",
            "ControlNet for this endpoint",
        )
        estimator = None
        if not sketch:
            estimator = _control_tool(
                DEPTH_ESTIMATOR_SERVICE, ImageModel.Kind.DEPTH_ESTIMATOR, "image", "depth estimator"
            )
        public_id = stability_route_resolve(service=service)
        model = _served(public_id)
        out = _prompted_fields(fields, public_id, model)
        control = image.convert("RGB")
        if model is not None:  # (the path itself refuses a missing model, naming it)
            width, height = nearest_size(PROFILES[model.profile].sizes, image.width / image.height)
            out["size"] = f"{width}x{height}"
            control = control.resize((width, height), Image.Resampling.LANCZOS)
        strength = fields.get("control_strength")
        return GenerationRequest(
            endpoint=endpoint,
            kind=Job.Kind.EDIT,  # (an input image; the worker runs it as text-to-image)
            fields=out,
            images=[InputImage(param="image", upload=_png(control, "image.png"))],
            price_action=CONTROL_SERVICES[service][0],
            control={
                "controlnet": controlnet,
                "preprocessor": "canny" if sketch else "depth",
                "depth_estimator": estimator,
                "scale": CONTROL_STRENGTH_DEFAULT if strength is None else float(strength),
            },
        )

    return mapper


def style_mapper(request: Request) -> GenerationRequest:
    """control/style: one text-to-image job of the endpoint's generator at
    `aspect_ratio`'s allowed size with the operator's IP-Adapter, the image its style
    reference and `fidelity` the adapter's scale; priced by the generator's row of
    `st_ctrl_style` (CONTROL_SERVICES)."""
    service = "control/style"
    fields = _fields(request, StyleRequestSerializer, files=("image",))
    image = _upload(request, "image", required=True)
    adapter = _control_tool(STYLE_ADAPTER_SERVICE, ImageModel.Kind.IP_ADAPTER, "image", "IP-Adapter")
    public_id = stability_route_resolve(service=service)
    model = _served(public_id)
    out = _prompted_fields(fields, public_id, model)
    if model is not None:
        width, height = nearest_size(PROFILES[model.profile].sizes, ASPECT_RATIOS[fields.get("aspect_ratio") or "1:1"])
        out["size"] = f"{width}x{height}"
    fidelity = fields.get("fidelity")
    return GenerationRequest(
        endpoint=f"/v2beta/stable-image/{service}",
        kind=Job.Kind.EDIT,  # (an input image; the worker runs it as text-to-image)
        fields=out,
        images=[InputImage(param="image", upload=_png(image.convert("RGB"), "image.png"))],
        price_action=CONTROL_SERVICES[service][0],
        style={"adapter": adapter, "scale": FIDELITY_DEFAULT if fidelity is None else float(fidelity)},
    )


# ---- Rendering -------------------------------------------------------------------------------


def stability_image_body(request: Request, job: Job) -> dict[str, Any]:
    """A succeeded job as Stability's JSON answer: `{image (base64), finish_reason, seed}`.
    (`Accept: image/*` turns it into the bytes in `StabilityShape.finalize_response`.)
    finish_reason is Stability's `CONTENT_FILTERED` for an image the output check
    delivered blurred (Stability's meaning: made, but blurred by its moderation; issue
    25), else `SUCCESS` (a flagged image is delivered as made)."""
    image = job.images.all()[0]
    data = image_read(image)
    seed = image.seed if image.seed is not None else job.seed
    filtered = (image.moderation or {}).get("action") == "blurred"
    return {
        "image": base64.b64encode(data).decode("ascii"),
        "finish_reason": "CONTENT_FILTERED" if filtered else "SUCCESS",
        "seed": seed,
    }


STABILITY = Renderer(body=stability_image_body)


def stability_accepted(request: Request, job: Job) -> Response:
    """Stability's answer to an asynchronous endpoint (upscale/creative): 200 `{id}`,
    polled at GET /v2beta/results/{id}."""
    return Response({"id": str(job.pk)}, status=200)


STABILITY_ASYNC = Renderer(body=stability_image_body, always_async=True, accepted=stability_accepted)

ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limit_exceeded",
    499: "client_closed_request",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
MODERATION_CODES = ("moderation_blocked", "content_policy_violation")


def stability_error_body(*, error: dict[str, Any], status: int, request_id: str) -> tuple[dict[str, Any], int]:
    """OpenAI's error object as Stability's envelope `{id, name, errors: [...]}` and its
    status: a moderation refusal is Stability's 403 `content_moderation`."""
    if error.get("code") in MODERATION_CODES:
        status, name = 403, "content_moderation"
    else:
        name = ERROR_NAMES.get(status, "internal_error" if status >= 500 else "bad_request")
    message = error.get("message") or name
    param = error.get("param")
    if param and not message.startswith(f"{param}:"):
        message = f"{param}: {message}"  # Stability names the field first ("prompt: is required")
    if error.get("top_up_url") and error["top_up_url"] not in message:
        message = f"{message} Add credits at {error['top_up_url']}"
    return {"id": request_id.removeprefix("req_"), "name": name, "errors": [message]}, status


class _AnyAccept(DefaultContentNegotiation):
    """Stability's clients send `Accept: image/*`: the view answers JSON through DRF and
    StabilityShape turns a success into bytes, so no Accept is ever a 406."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def wants_image(request: Request) -> bool:
    """`Accept: image/*` (or none, or `*/*`): the bytes; `application/json`: the JSON."""
    accept = (request.headers.get("Accept") or "").lower()
    return "application/json" not in accept


class StabilityShape:
    """Stability's answers for a view: errors in its envelope, JSON or bytes by Accept,
    and `Prefer: respond-async`'s 202 as `{id}` (polled at /v2beta/results/{id})."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = _AnyAccept

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        error = response.data.get("error") if isinstance(getattr(response, "data", None), dict) else None
        if isinstance(error, dict):
            request_id = getattr(getattr(self.request, "_request", self.request), "request_id", "")
            response.data, response.status_code = stability_error_body(
                error=error, status=response.status_code, request_id=request_id
            )
        return response

    def finalize_response(self, request, response, *args, **kwargs):
        data = getattr(response, "data", None)
        if isinstance(response, Response) and isinstance(data, dict):
            if response.status_code == 202 and data.get("object") == "image.task":
                response.data = {"id": data["id"]}
                response["Location"] = request.build_absolute_uri(f"/v2beta/results/{data['id']}")
            elif response.status_code == 200 and "finish_reason" in data and wants_image(request):
                response = _image_response(response)
        return super().finalize_response(request, response, *args, **kwargs)


def _image_response(response: Response) -> HttpResponse:
    raw = base64.b64decode(response.data["image"])
    answer = HttpResponse(raw, status=200, content_type=f"image/{uploads.sniff(raw[:16]) or 'png'}")
    for name, value in response.items():
        if name.lower() != "content-type":
            answer[name] = value
    answer["finish-reason"] = response.data["finish_reason"]
    answer["seed"] = str(response.data["seed"])
    return answer


# ---- Views -----------------------------------------------------------------------------------


@extend_schema(exclude=True)  # documented in docs/api.md; the OpenAPI document covers /v1 and /api
class StabilityViewSet(StabilityShape, ChargedViewSet):
    """POST /v2beta/stable-image/{generate,edit}/...: one action per endpoint."""

    def generate_sd3(self, request: Request) -> Response:
        return self.charged(request, SD3_MAPPER, STABILITY)

    def generate_core(self, request: Request) -> Response:
        return self.charged(request, CORE_MAPPER, STABILITY)

    def generate_ultra(self, request: Request) -> Response:
        return self.charged(request, ULTRA_MAPPER, STABILITY)

    def edit_inpaint(self, request: Request) -> Response:
        return self.charged(request, inpaint_mapper, STABILITY)

    def edit_outpaint(self, request: Request) -> Response:
        return self.charged(request, outpaint_mapper, STABILITY)

    def edit_erase(self, request: Request) -> Response:
        return self.charged(request, erase_mapper, STABILITY)

    def edit_search_and_replace(self, request: Request) -> Response:
        return self.charged(request, SEARCH_REPLACE_MAPPER, STABILITY)

    def edit_search_and_recolor(self, request: Request) -> Response:
        return self.charged(request, SEARCH_RECOLOR_MAPPER, STABILITY)

    def edit_remove_background(self, request: Request) -> Response:
        return self.charged(request, REMOVE_BACKGROUND_MAPPER, STABILITY)

    def upscale_fast(self, request: Request) -> Response:
        return self.charged(request, FAST_UPSCALE_MAPPER, STABILITY)

    def upscale_conservative(self, request: Request) -> Response:
        return self.charged(request, CONSERVATIVE_UPSCALE_MAPPER, STABILITY)

    def upscale_creative(self, request: Request) -> Response:
        return self.charged(request, CREATIVE_UPSCALE_MAPPER, STABILITY_ASYNC)

    def control_sketch(self, request: Request) -> Response:
        return self.charged(request, SKETCH_MAPPER, STABILITY)

    def control_structure(self, request: Request) -> Response:
        return self.charged(request, STRUCTURE_MAPPER, STABILITY)

    def control_style(self, request: Request) -> Response:
        return self.charged(request, style_mapper, STABILITY)


SD3_MAPPER = _generate_mapper("generate/sd3", SD3RequestSerializer, takes_image=True)
CORE_MAPPER = _generate_mapper("generate/core", CoreRequestSerializer, takes_image=False)
ULTRA_MAPPER = _generate_mapper("generate/ultra", UltraRequestSerializer, takes_image=True)
SEARCH_REPLACE_MAPPER = _search_mapper(
    "edit/search-and-replace", SearchReplaceRequestSerializer, text_field="search_prompt", strength=INPAINT_STRENGTH
)
SEARCH_RECOLOR_MAPPER = _search_mapper(
    "edit/search-and-recolor", SearchRecolorRequestSerializer, text_field="select_prompt", strength=RECOLOR_STRENGTH
)
REMOVE_BACKGROUND_MAPPER = _tool_mapper("edit/remove-background", RemoveBackgroundRequestSerializer)
FAST_UPSCALE_MAPPER = _tool_mapper("upscale/fast", FastUpscaleRequestSerializer)
CONSERVATIVE_UPSCALE_MAPPER = _tool_mapper("upscale/conservative", ConservativeUpscaleRequestSerializer)
CREATIVE_UPSCALE_MAPPER = _tool_mapper("upscale/creative", CreativeUpscaleRequestSerializer)
SKETCH_MAPPER = _control_mapper("control/sketch")
STRUCTURE_MAPPER = _control_mapper("control/structure")


@extend_schema(exclude=True)
class StabilityResultViewSet(StabilityShape, viewsets.ViewSet):
    """GET /v2beta/results/{id}: 202 `{id, status: "in-progress"}` while the job is queued
    or running; its image (bytes or JSON, by Accept) once it succeeded; its error in the
    envelope otherwise. Another tenant's id is a 404, like one that does not exist."""

    def retrieve(self, request: Request, result_id: str) -> Response:
        job = tenant_job(request, result_id)
        if job.status not in Job.TERMINAL:
            return Response({"id": str(job.pk), "status": "in-progress"}, status=202)
        error = job_error(job=job)
        if error is not None:
            raise error
        return Response(stability_image_body(request, job))


@extend_schema(exclude=True)
class StabilityBalanceView(StabilityShape, APIView):
    """GET /v1/user/balance: `{"credits": float}`, the tenant's available credits
    (balance less holds) in the operator's credit unit (docs/configuration.md)."""

    def get(self, request: Request) -> Response:
        caller = caller_from_request(request)
        if caller is None:
            raise PermissionDeniedError("Only members of an organization have a balance.", code="permission_denied")
        return Response({"credits": float(credits_available(tenant_id=caller.tenant.pk))})


@extend_schema(exclude=True)
class StabilityUnknownRouteView(StabilityShape, APIView):
    """Anything else under /v2beta: a 404 in Stability's envelope (docs/api.md lists
    what is served)."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []

    def dispatch(self, request, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        response = self.handle_exception(
            NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
        )
        self.response = self.finalize_response(self.request, response, *args, **kwargs)
        return self.response


def _action(name: str):
    return StabilityViewSet.as_view({"post": name})


def stability_urls() -> list:
    """The routes under /v2beta/ (platform/urls.py includes them)."""
    from django.urls import path

    return [
        path("stable-image/generate/sd3", _action("generate_sd3")),
        path("stable-image/generate/core", _action("generate_core")),
        path("stable-image/generate/ultra", _action("generate_ultra")),
        path("stable-image/edit/inpaint", _action("edit_inpaint")),
        path("stable-image/edit/outpaint", _action("edit_outpaint")),
        path("stable-image/edit/erase", _action("edit_erase")),
        path("stable-image/edit/search-and-replace", _action("edit_search_and_replace")),
        path("stable-image/edit/search-and-recolor", _action("edit_search_and_recolor")),
        path("stable-image/edit/remove-background", _action("edit_remove_background")),
        path("stable-image/upscale/fast", _action("upscale_fast")),
        path("stable-image/upscale/conservative", _action("upscale_conservative")),
        path("stable-image/upscale/creative", _action("upscale_creative")),
        path("stable-image/control/sketch", _action("control_sketch")),
        path("stable-image/control/structure", _action("control_structure")),
        path("stable-image/control/style", _action("control_style")),
        path("results/<str:result_id>", StabilityResultViewSet.as_view({"get": "retrieve"})),
    ]
