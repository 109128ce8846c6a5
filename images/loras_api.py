"""GET /v1/loras (issue 23): the LoRA adapters the calling key's tenant may use.

    GET /v1/loras                  every adapter the tenant may use
    GET /v1/loras?model=<id>       only those that fit that model

Never another tenant's private adapters (images.services.loras.loras_visible); the
adapter's path and grants are not shown. Requests name an adapter by its `id` in
`loras: [{"name": id, "scale": 0.8}]` (docs/api.md, "LoRA adapters").
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.ratelimit import caller_from_request
from core.errors import NotFound, PermissionDeniedError
from core.schema import AUTH_ERRORS, errors
from images import selectors
from images.services.loras import lora_body, loras_visible


class LoraSerializer(serializers.Serializer):
    object = serializers.CharField(help_text='"lora"')
    id = serializers.CharField(help_text="the name requests use in `loras`")
    base_model = serializers.CharField(allow_null=True, help_text="the model it fits (null: a whole family)")
    family = serializers.CharField(allow_null=True, help_text="the family it fits when it names no model")
    trigger = serializers.CharField(help_text="trigger words to put in the prompt ('' if none)")
    surcharge_credits = serializers.IntegerField(help_text="credits per image on top of the model's price")
    created = serializers.IntegerField()


@extend_schema_serializer(many=False)  # the list action answers one object, not an array
class LoraListSerializer(serializers.Serializer):
    object = serializers.CharField(help_text='"list"')
    data = LoraSerializer(many=True)


class LoraViewSet(viewsets.ViewSet):
    """GET /v1/loras (module docstring)."""

    @extend_schema(
        summary="List the LoRA adapters this key may use",
        tags=["models"],
        parameters=[OpenApiParameter("model", OpenApiTypes.STR, description="only adapters that fit this model")],
        responses={200: LoraListSerializer, **errors(404, *AUTH_ERRORS)},
    )
    def list(self, request: Request) -> Response:
        caller = caller_from_request(request)
        if caller is None:
            raise PermissionDeniedError("Only members of an organization may list adapters.", code="permission_denied")
        model = None
        model_id = request.query_params.get("model")
        if model_id:
            model = selectors.image_model_get(public_id=model_id)
            if model is None:
                raise NotFound(
                    f"The model '{model_id}' does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
        rows = loras_visible(tenant=caller.tenant, model=model)
        return Response({"object": "list", "data": [lora_body(adapter) for adapter in rows]})
