"""The OpenAI Images API's request mappers (parse only; reference §2-§4): a request ->
a `GenerationRequest` for the charged flow (images/charged.py), and the multipart
helpers every shape's mapper uses (`form_fields`, `uploads`, `validated`).
"""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request

from core.errors import InvalidRequest
from images.models import Job
from images.services.generation import GenerationRequest
from images.services.inputs import InputImage
from images.validation import (
    EditJSONRequestSerializer,
    EditRequestSerializer,
    GenerationRequestSerializer,
    VariationRequestSerializer,
)

# ---- Request mappers (parse only) ----------------------------------------------------------


def _is_form(request: Request) -> bool:
    return hasattr(request.data, "lists")


def form_fields(request: Request, *, files: tuple[str, ...] = ("image", "mask")) -> dict[str, Any]:
    """Multipart/form fields as a plain dict (first value of each), file parts left out.
    A file part under any other name is an unknown parameter."""
    data = request.data
    for name in request.FILES:
        # `image`, `image[]` and `image[0]`... for the image list (clients differ); `mask` as is.
        allowed = name in files or (name.startswith("image[") and "image" in files)
        if not allowed:
            raise InvalidRequest(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    if _is_form(request):
        for name, values in data.lists():
            if len(values) > 1 and name not in request.FILES:
                raise InvalidRequest(
                    f"The parameter '{name}' was sent more than once.", param=name, code="duplicate_parameter"
                )
    if not _is_form(request):
        return dict(data) if isinstance(data, dict) else data
    return {k: v[0] for k, v in data.lists() if k not in request.FILES and k.split("[", 1)[0] not in files}


def uploads(request: Request, name: str) -> list:
    files = request.FILES.getlist(name) + request.FILES.getlist(f"{name}[]")
    for key in request.FILES:  # some clients send image[0], image[1] ...
        if key.startswith(f"{name}[") and key != f"{name}[]":
            files += request.FILES.getlist(key)
    return files


def validated(serializer_class, data: Any, *, form: bool = False) -> dict[str, Any]:
    serializer = serializer_class(data=data, context={"form": form})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def generation_mapper(request: Request) -> GenerationRequest:
    """POST /v1/images/generations: JSON (or a form) with CreateImageRequest's fields."""
    form = _is_form(request)
    fields = validated(GenerationRequestSerializer, form_fields(request, files=()) if form else request.data, form=form)
    return GenerationRequest(endpoint="/v1/images/generations", fields=fields)


def _reference(item: dict[str, Any], param: str) -> InputImage:
    if "file_id" in item:
        raise InvalidRequest(
            "File ids are not supported here; send the image as an 'image_url' (a data URL or an https URL).",
            param=param,
            code="unsupported_parameter",
        )
    return InputImage(param=param, reference=item["image_url"])


def edit_mapper(request: Request) -> GenerationRequest:
    """POST /v1/images/edits: multipart (`image`/`image[]` files, `mask`) or, for GPT
    image models, JSON with `images: [{image_url}]` and `mask: {image_url}` (reference §3)."""
    if not _is_form(request) and isinstance(request.data, dict):
        fields = validated(EditJSONRequestSerializer, request.data)
        images = [_reference(item, "images") for item in fields.pop("images")]
        mask = fields.pop("mask", None)
        return GenerationRequest(
            endpoint="/v1/images/edits",
            kind=Job.Kind.EDIT,
            fields=fields,
            images=images,
            mask=_reference(mask, "mask") if mask else None,
            json_references=True,
        )
    fields = validated(EditRequestSerializer, form_fields(request), form=True)
    return _with_uploads(request, endpoint="/v1/images/edits", kind=Job.Kind.EDIT, fields=fields)


def _with_uploads(request: Request, *, endpoint: str, kind: str, fields: dict[str, Any]) -> GenerationRequest:
    """A request whose images are the multipart `image` parts (and `mask`), not yet read."""
    mask_file = request.FILES.get("mask")
    return GenerationRequest(
        endpoint=endpoint,
        kind=kind,
        fields=fields,
        images=[InputImage(param="image", upload=f) for f in uploads(request, "image")],
        mask=InputImage(param="mask", upload=mask_file) if mask_file else None,
    )


def variation_mapper(request: Request) -> GenerationRequest:
    """POST /v1/images/variations: multipart with one `image`."""
    fields = validated(VariationRequestSerializer, form_fields(request), form=_is_form(request))
    return _with_uploads(request, endpoint="/v1/images/variations", kind=Job.Kind.VARIATION, fields=fields)
