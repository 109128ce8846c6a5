"""Tool jobs for the vendor shapes (issue 26 item 1): the GenerationRequest of a tool
job on the one generation service (images/tool_models.py has the rules)."""

from __future__ import annotations

from typing import Any

from core.errors import InvalidRequest
from images.models import ImageModel
from images.services.generation import GenerationRequest
from images.services.inputs import InputImage
from images.tool_models import ACTIONS, MODEL_KIND_OF_JOB, TOOL_JOB_KINDS


def tool_model_default(*, kind: str) -> ImageModel | None:
    """The first enabled model serving a tool job kind (by creation), for shapes that
    name no model (the Midjourney proxy's describe); None when none is registered."""
    return ImageModel.objects.filter(kind=MODEL_KIND_OF_JOB[kind], enabled=True).order_by("created_at", "pk").first()


def tool_generation_request(
    *,
    endpoint: str,
    kind: str,
    image: InputImage,
    model: str | None = None,
    fields: dict[str, Any] | None = None,
    price_action: str = "",
    on_job_created: Any = None,
) -> GenerationRequest:
    """A GenerationRequest for a tool job, for the vendor shapes: `kind` one of
    TOOL_JOB_KINDS, `image` the input, `model` the tool model's public id (None: the
    first enabled model of the kind, 400 `model_not_found` when there is none),
    `fields` more request fields (prompt, output_format, seed, webhook_url...)."""
    if kind not in TOOL_JOB_KINDS:
        raise ValueError(f"not a tool job kind: {kind!r}")
    if model is None:
        found = tool_model_default(kind=kind)
        if found is None:
            raise InvalidRequest(
                f"No model for {ACTIONS[kind]} is installed; contact your platform operator.",
                param="model",
                code="model_not_found",
            )
        model = found.public_id
    return GenerationRequest(
        endpoint=endpoint,
        kind=kind,
        fields={**(fields or {}), "model": model},
        images=[image],
        default_model=model,
        strength=1.0,  # (unused by tools; keeps edit_strength's rules out of it)
        price_action=price_action,
        on_job_created=on_job_created,
    )
