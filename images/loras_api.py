"""/v1/loras (issue 23): the LoRA adapters the calling key's tenant may use, and its own.

    GET /v1/loras                  every adapter the tenant may use
    GET /v1/loras?model=<id>       only those that fit that model
    POST /v1/loras                 multipart: `file` (.safetensors), `name`, `base` (a model
                                   id): the tenant's own adapter (when LORA_TENANT_UPLOADS
                                   allows; an admin key or an owner's/admin's session)
    DELETE /v1/loras/{id}          delete one of the tenant's own adapters (same callers)

Never another tenant's private adapters (images.services.loras.loras_visible); the
adapter's path, storage name and grants are not shown. Requests name an adapter by its
`id` in `loras: [{"name": id, "scale": 0.8}]` (docs/api.md, "LoRA adapters"); an
upload's id is `t<tenant id>:<name>` (images.services.loras.upload_id).
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import APIKeyAuthentication
from accounts.models import Tenant
from accounts.principals import managed_tenant
from accounts.ratelimit import caller_from_request
from core.errors import InvalidRequest, NotFound, PermissionDeniedError
from core.schema import AUTH_ERRORS, errors
from images import selectors
from images.services.loras import lora_body, lora_delete, lora_upload, loras_visible


class LoraSerializer(serializers.Serializer):
    object = serializers.CharField(help_text='"lora"')
    id = serializers.CharField(help_text="the name requests use in `loras`")
    base_model = serializers.CharField(allow_null=True, help_text="the model it fits (null: a whole family)")
    family = serializers.CharField(allow_null=True, help_text="the family it fits when it names no model")
    trigger = serializers.CharField(help_text="trigger words to put in the prompt ('' if none)")
    surcharge_credits = serializers.IntegerField(help_text="credits per image on top of the model's price")
    owned_by = serializers.CharField(help_text='"system" (the operator\'s) or "organization" (your own upload)')
    created = serializers.IntegerField()


@extend_schema_serializer(many=False)  # the list action answers one object, not an array
class LoraListSerializer(serializers.Serializer):
    object = serializers.CharField(help_text='"list"')
    data = LoraSerializer(many=True)


class LoraUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="the adapter, a .safetensors file (diffusers', peft's or kohya's keys)")
    name = serializers.CharField(help_text="1-64 letters, digits, '.', '_', '-'; the id becomes t<tenant>:<name>")
    base = serializers.CharField(help_text="the id of the model it was trained for")


class LoraDeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text='"lora"')
    deleted = serializers.BooleanField()


class LoraViewSet(viewsets.ViewSet):
    """GET /v1/loras, POST /v1/loras, DELETE /v1/loras/{id} (module docstring)."""

    authentication_classes = [APIKeyAuthentication, SessionAuthentication]
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    lookup_field = "id"
    lookup_value_regex = "[^/]+"

    def manager(self, request: Request) -> Tenant:
        """The tenant whose own adapters this request manages: an admin key's, or the one
        an owner's or admin member's session manages (the rule of /v1/keys). 403 otherwise."""
        tenant, _ = managed_tenant(
            auth=request.auth,
            user=request.user,
            tenant_name=request.query_params.get("tenant"),
            what="LoRA adapters",
        )
        return tenant

    @extend_schema(
        summary="Upload one of your organization's own LoRA adapters",
        tags=["models"],
        request={"multipart/form-data": LoraUploadSerializer},
        responses={201: LoraSerializer, **errors(400, 404, 413, *AUTH_ERRORS)},
    )
    def create(self, request: Request) -> Response:
        tenant = self.manager(request)
        for field in ("file", "name", "base"):
            if field not in request.data:
                raise InvalidRequest(
                    f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter"
                )
        for field in request.data:
            if field not in ("file", "name", "base"):
                raise InvalidRequest(f"Unknown parameter: '{field}'.", param=field, code="unknown_parameter")
        upload = request.data["file"]
        if not hasattr(upload, "read") or not hasattr(upload, "size"):
            raise InvalidRequest("'file' must be a file (multipart/form-data).", param="file", code="invalid_type")
        adapter = lora_upload(
            tenant=tenant, name=request.data["name"], base=request.data["base"], upload=upload, size=upload.size
        )
        return Response(lora_body(adapter), status=201)

    @extend_schema(
        summary="Delete one of your organization's own LoRA adapters",
        tags=["models"],
        responses={200: LoraDeletedSerializer, **errors(404, *AUTH_ERRORS)},
    )
    def destroy(self, request: Request, id: str) -> Response:
        adapter = lora_delete(tenant=self.manager(request), lora_id=id)
        return Response({"id": adapter.name, "object": "lora", "deleted": True})

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
