"""HTTP adapters for the Images API, as DRF ViewSets on a router (platform/api_router.py):
generations, edits and variations (reference §2-§4, on the charged flow of
images/charged.py with the mappers of images/mappers.py), models, signed file links,
and the envelope 404 for unknown URLs. Tasks are images/tasks_api.py.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import NotFound
from core.schema import AUTH_ERRORS, errors
from images import selectors
from images.charged import OPENAI_EDIT, OPENAI_GENERATION, ChargedViewSet
from images.files import (
    StorageUnavailable,
    image_presigned_url,
    image_read,
    image_token_read_with_age,
    storage_is_remote,
)
from images.mappers import edit_mapper, generation_mapper, variation_mapper
from images.openapi import EXAMPLE, EditFormSchema, VariationFormSchema, charged_schema
from images.serializers import (
    ImagesResponseSerializer,
    ModelListSerializer,
    ModelSerializer,
    model_body,
    model_list_body,
)
from images.validation import (
    EditJSONRequestSerializer,
    GenerationRequestSerializer,
)

# ---- ViewSets --------------------------------------------------------------------------------


class ImagesViewSet(ChargedViewSet):
    """/v1/images/generations, /v1/images/edits, /v1/images/variations (reference §2-§4)."""

    @charged_schema("Create an image", request=GenerationRequestSerializer, examples=[EXAMPLE])
    @action(detail=False, methods=["post"])
    def generations(self, request: Request) -> Response:
        return self.charged(request, generation_mapper, OPENAI_GENERATION)

    @charged_schema(
        "Edit images", request={"multipart/form-data": EditFormSchema, "application/json": EditJSONRequestSerializer}
    )
    @action(detail=False, methods=["post"])
    def edits(self, request: Request) -> Response:
        return self.charged(request, edit_mapper, OPENAI_EDIT)

    @charged_schema(
        "Create a variation", request={"multipart/form-data": VariationFormSchema}, response=ImagesResponseSerializer
    )
    @action(detail=False, methods=["post"])
    def variations(self, request: Request) -> Response:
        return self.charged(request, variation_mapper, OPENAI_GENERATION)


class ImageModelViewSet(viewsets.ViewSet):
    """GET /v1/models and /v1/models/{id}. Ids contain dots (`gpt-image-1.5`)."""

    lookup_field = "model_id"
    lookup_value_regex = "[^/]+"

    @extend_schema(summary="List models", tags=["models"], responses={200: ModelListSerializer, **errors(*AUTH_ERRORS)})
    def list(self, request: Request) -> Response:
        return Response(model_list_body(selectors.image_model_list()))

    @extend_schema(
        summary="Read a model",
        tags=["models"],
        operation_id="v1_models_get",
        responses={200: ModelSerializer, **errors(404, *AUTH_ERRORS)},
    )
    def retrieve(self, request: Request, model_id: str) -> Response:
        model = selectors.image_model_get(public_id=model_id)
        if model is None:
            raise NotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return Response(model_body(model))


class ImageFileViewSet(viewsets.ViewSet):
    """GET /v1/files/{token}: a signed link, readable without the API key (like the
    vendors' CDN links). Tampered, expired or foreign tokens are a plain 404."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []
    lookup_field = "token"
    lookup_value_regex = "[^/]+"

    @extend_schema(
        summary="Download an image by its signed link",
        tags=["images"],
        auth=[],
        responses={
            (200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="PNG, JPEG or WebP bytes"),
            302: OpenApiResponse(
                description="With object storage: a redirect to a presigned "
                "URL of the image, valid for the rest of the hour"
            ),
            **errors(404, 405, 503),
        },
    )
    def retrieve(self, request: Request, token: str) -> HttpResponse:
        """Local storage: the bytes. An object store: a 302 to a presigned URL of the
        object, valid for what is left of the token's hour (images/files.py says why),
        or the bytes streamed from the store when S3_PRESIGNED_REDIRECT is off."""
        found = image_token_read_with_age(token)
        image = selectors.image_get(tenant_id=found[1], image_id=found[0]) if found else None
        if image is None:
            raise NotFound("The requested image was not found or its link has expired.", code="not_found")
        if storage_is_remote() and settings.S3_PRESIGNED_REDIRECT:
            response = HttpResponseRedirect(image_presigned_url(image.file, expires_in=int(found[2])))
            response["Cache-Control"] = "private, no-store"
            return response
        try:
            handle = default_storage.open(image.file, "rb")
        except Exception as exc:
            if isinstance(exc, FileNotFoundError) or getattr(exc, "response", None):
                image_read(image)  # raises ImagesExpired (gone) or StorageUnavailable (away)
            raise StorageUnavailable(
                "The image store is unavailable; retry shortly.", headers={"Retry-After": "5"}
            ) from exc
        response = FileResponse(handle, content_type=image.content_type)
        response["Cache-Control"] = "private, max-age=3600"
        return response


class UnknownRouteView(APIView):
    """Anything else under /v1 and /api: a 404 in the envelope."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs
        self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        exc = NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
        response = self.handle_exception(exc)
        self.response = self.finalize_response(self.request, response, *args, **kwargs)
        return self.response


extend_schema(exclude=True)(UnknownRouteView)
