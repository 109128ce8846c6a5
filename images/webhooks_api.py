"""/v1/webhooks (issue 24): a tenant's webhook endpoints, their secrets and delivery
logs, with an admin key or an owner's (or admin member's) session, as /v1/keys.

    GET    /v1/webhooks                                   list the endpoints
    POST   /v1/webhooks                                   create one (its secret is in this answer only)
    GET    /v1/webhooks/{id}                              read one
    PATCH  /v1/webhooks/{id}                              change url, events, description, enabled
    DELETE /v1/webhooks/{id}                              delete it and its log
    POST   /v1/webhooks/{id}/rotate_secret                a new secret (the old one signs too, for a grace period)
    GET    /v1/webhooks/{id}/deliveries                   its delivery log, newest first
    POST   /v1/webhooks/{id}/deliveries/{delivery}/retry  send a delivery again
    POST   /v1/webhooks/request_secret                    (re)make the secret of per-request `webhook_url`s

Another tenant's endpoint or delivery is a 404, like a missing one.
"""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import APIKeyAuthentication
from accounts.models import Tenant
from accounts.principals import managed_tenant
from core.errors import NotFound
from core.schema import AUTH_ERRORS, errors
from images.fields import StrictBooleanField, StrictCharField, StrictSerializer, WebhookURLField
from images.models import WEBHOOK_EVENTS, WebhookDelivery, WebhookEndpoint
from images.services import webhooks as services


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


# ---- serializers ---------------------------------------------------------------------------


class WebhookEndpointSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="webhook_endpoint")
    url = serializers.CharField()
    description = serializers.CharField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=WEBHOOK_EVENTS), help_text="[] = every event")
    enabled = serializers.BooleanField()
    created_at = serializers.IntegerField()
    failing_since = serializers.IntegerField(
        allow_null=True, help_text="When the current run of failed attempts began (null: the last one succeeded)"
    )
    consecutive_failures = serializers.IntegerField()
    disabled_at = serializers.IntegerField(allow_null=True)
    disabled_reason = serializers.CharField()
    previous_secret_expires_at = serializers.IntegerField(
        allow_null=True, help_text="Until when the secret before the last rotation still signs"
    )
    secret = serializers.CharField(required=False, help_text="Only when created or rotated: `whsec_...`")


@extend_schema_serializer(many=False)  # the list action answers one object, not an array
class WebhookEndpointListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = WebhookEndpointSerializer(many=True)


class WebhookDeliverySerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="webhook_delivery")
    event_id = serializers.CharField(help_text="The `webhook-id` header, the same on every attempt")
    event_type = serializers.CharField()
    task_id = serializers.CharField(allow_null=True)
    url = serializers.CharField()
    status = serializers.ChoiceField(choices=WebhookDelivery.Status.values)
    attempts = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    next_attempt_at = serializers.IntegerField(allow_null=True)
    delivered_at = serializers.IntegerField(allow_null=True)
    created_at = serializers.IntegerField()


class WebhookDeliveryListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = WebhookDeliverySerializer(many=True)


class WebhookSecretSerializer(serializers.Serializer):
    object = serializers.CharField(default="webhook_secret")
    secret = serializers.CharField(help_text="`whsec_...`: shown in this answer only")
    previous_secret_expires_at = serializers.IntegerField(allow_null=True)


class EventsField(serializers.ListField):
    child = serializers.ChoiceField(choices=WEBHOOK_EVENTS)


class WebhookCreateSerializer(StrictSerializer):
    url = WebhookURLField(required=True, allow_null=False)
    events = EventsField(required=False, help_text="Events wanted; omitted or [] = every event")
    description = StrictCharField(required=False, allow_blank=True, max_length=200)
    enabled = StrictBooleanField(required=False)


class WebhookUpdateSerializer(StrictSerializer):
    url = WebhookURLField(required=False, allow_null=False)
    events = EventsField(required=False)
    description = StrictCharField(required=False, allow_blank=True, max_length=200)
    enabled = StrictBooleanField(required=False)


def endpoint_body(endpoint: WebhookEndpoint, *, secret: str | None = None) -> dict[str, Any]:
    body = {
        "id": str(endpoint.pk),
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "description": endpoint.description,
        "events": endpoint.events,
        "enabled": endpoint.enabled,
        "created_at": _ts(endpoint.created_at),
        "failing_since": _ts(endpoint.failing_since),
        "consecutive_failures": endpoint.consecutive_failures,
        "disabled_at": _ts(endpoint.disabled_at),
        "disabled_reason": endpoint.disabled_reason,
        "previous_secret_expires_at": _ts(endpoint.previous_secret_expires_at) if endpoint.previous_secret else None,
    }
    if secret is not None:
        body["secret"] = secret
    return WebhookEndpointSerializer(body).data


def delivery_body(delivery: WebhookDelivery) -> dict[str, Any]:
    return WebhookDeliverySerializer(
        {
            "id": str(delivery.pk),
            "object": "webhook_delivery",
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
            "task_id": str(delivery.job_id) if delivery.job_id else None,
            "url": delivery.url,
            "status": delivery.status,
            "attempts": delivery.attempts,
            "last_status_code": delivery.last_status_code,
            "last_error": delivery.last_error,
            "next_attempt_at": _ts(delivery.next_attempt_at),
            "delivered_at": _ts(delivery.delivered_at),
            "created_at": _ts(delivery.created_at),
        }
    ).data


# ---- the ViewSet ---------------------------------------------------------------------------

ID = OpenApiParameter("id", str, OpenApiParameter.PATH, description="The endpoint's id")
DELIVERY_ID = OpenApiParameter("delivery_id", str, OpenApiParameter.PATH, description="The delivery's id")
DELIVERY_LIMIT = 100
NO_PARAMETERS = {"application/json": OpenApiTypes.OBJECT}  # (actions without parameters: {} or no body)


def _errors(*statuses: int):
    return errors(*sorted({*statuses, *AUTH_ERRORS}))


def _uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


class WebhookViewSet(viewsets.ViewSet):
    """Webhook endpoints of the caller's tenant (module docstring)."""

    authentication_classes = [APIKeyAuthentication, SessionAuthentication]
    lookup_field = "id"
    lookup_value_regex = "[^/]+"

    def tenant(self, request: Request) -> Tenant:
        """The tenant managed in this request: an admin key's, or the one an owner's or
        admin member's session manages (the same rule as /v1/keys). 403 otherwise."""
        tenant, _ = managed_tenant(
            auth=request.auth, user=request.user, tenant_name=request.query_params.get("tenant"), what="webhooks"
        )
        return tenant

    def _endpoint(self, request: Request, id: str) -> WebhookEndpoint:
        pk = _uuid(id)
        endpoint = WebhookEndpoint.objects.filter(pk=pk, tenant=self.tenant(request)).first() if pk else None
        if endpoint is None:
            raise NotFound("No such webhook endpoint.", param="id", code="not_found")
        return endpoint

    @extend_schema(
        summary="List webhook endpoints",
        tags=["webhooks"],
        operation_id="v1_webhooks_list",
        responses={200: WebhookEndpointListSerializer, **_errors(403)},
    )
    def list(self, request: Request) -> Response:
        endpoints = WebhookEndpoint.objects.filter(tenant=self.tenant(request))
        return Response({"object": "list", "data": [endpoint_body(e) for e in endpoints]})

    @extend_schema(
        summary="Create a webhook endpoint (its secret is in this answer only)",
        tags=["webhooks"],
        operation_id="v1_webhooks_create",
        request=WebhookCreateSerializer,
        responses={201: WebhookEndpointSerializer, **_errors(400, 403)},
    )
    def create(self, request: Request) -> Response:
        tenant = self.tenant(request)
        serializer = WebhookCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        endpoint, secret = services.endpoint_create(
            tenant=tenant,
            url=data["url"],
            events=data.get("events"),
            description=data.get("description") or "",
            enabled=data.get("enabled", True),
        )
        return Response(endpoint_body(endpoint, secret=secret), status=201)

    @extend_schema(
        summary="Read a webhook endpoint",
        tags=["webhooks"],
        operation_id="v1_webhooks_retrieve",
        parameters=[ID],
        responses={200: WebhookEndpointSerializer, **_errors(403, 404)},
    )
    def retrieve(self, request: Request, id: str) -> Response:
        return Response(endpoint_body(self._endpoint(request, id)))

    @extend_schema(
        summary="Change a webhook endpoint",
        tags=["webhooks"],
        operation_id="v1_webhooks_update",
        parameters=[ID],
        description="`enabled: true` on a disabled endpoint clears its failure record.",
        request=WebhookUpdateSerializer,
        responses={200: WebhookEndpointSerializer, **_errors(400, 403, 404)},
    )
    def partial_update(self, request: Request, id: str) -> Response:
        endpoint = self._endpoint(request, id)
        serializer = WebhookUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = services.endpoint_update(endpoint=endpoint, changes=dict(serializer.validated_data))
        return Response(endpoint_body(endpoint))

    @extend_schema(
        summary="Delete a webhook endpoint and its delivery log",
        tags=["webhooks"],
        operation_id="v1_webhooks_destroy",
        parameters=[ID],
        responses={200: WebhookEndpointSerializer, **_errors(403, 404)},
    )
    def destroy(self, request: Request, id: str) -> Response:
        endpoint = self._endpoint(request, id)
        body = endpoint_body(endpoint)
        services.endpoint_delete(endpoint=endpoint)
        return Response({**body, "deleted": True})

    @extend_schema(
        summary="Rotate an endpoint's signing secret",
        tags=["webhooks"],
        operation_id="v1_webhooks_rotate_secret",
        parameters=[ID],
        request=NO_PARAMETERS,
        description="The new secret is in this answer only; the previous one still signs every message "
        "(a second `v1,` signature) until `previous_secret_expires_at`.",
        responses={200: WebhookEndpointSerializer, **_errors(403, 404)},
    )
    @action(detail=True, methods=["post"])
    def rotate_secret(self, request: Request, id: str) -> Response:
        endpoint = self._endpoint(request, id)
        secret = services.endpoint_secret_rotate(endpoint=endpoint)
        return Response(endpoint_body(endpoint, secret=secret))

    @extend_schema(
        summary="An endpoint's delivery log (newest first, up to 100)",
        tags=["webhooks"],
        operation_id="v1_webhooks_deliveries",
        parameters=[ID],
        responses={200: WebhookDeliveryListSerializer, **_errors(403, 404)},
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, id: str) -> Response:
        endpoint = self._endpoint(request, id)
        rows = WebhookDelivery.objects.filter(endpoint=endpoint)[:DELIVERY_LIMIT]
        return Response({"object": "list", "data": [delivery_body(d) for d in rows]})

    @extend_schema(
        summary="Send a delivery again",
        tags=["webhooks"],
        operation_id="v1_webhooks_delivery_retry",
        parameters=[ID, DELIVERY_ID],
        request=NO_PARAMETERS,
        description="The same event (`webhook-id` and body) is sent again now, whatever its status.",
        responses={200: WebhookDeliverySerializer, **_errors(400, 403, 404)},
    )
    @action(detail=True, methods=["post"], url_path=r"deliveries/(?P<delivery_id>[^/]+)/retry")
    def retry(self, request: Request, id: str, delivery_id: str) -> Response:
        endpoint = self._endpoint(request, id)
        pk = _uuid(delivery_id)
        delivery = (
            WebhookDelivery.objects.select_related("endpoint").filter(pk=pk, endpoint=endpoint).first() if pk else None
        )
        if delivery is None:
            raise NotFound("No such delivery.", param="delivery_id", code="not_found")
        return Response(delivery_body(services.delivery_retry(delivery=delivery)))

    @extend_schema(
        summary="Make or rotate the secret of per-request webhook_url deliveries",
        tags=["webhooks"],
        operation_id="v1_webhooks_request_secret",
        request=NO_PARAMETERS,
        description="Deliveries to a request's `webhook_url` are signed with this tenant-wide secret. "
        "The answer shows it once; the previous one still signs during the grace period.",
        responses={200: WebhookSecretSerializer, **_errors(403)},
    )
    @action(detail=False, methods=["post"])
    def request_secret(self, request: Request) -> Response:
        tenant = self.tenant(request)
        secret = services.request_secret_rotate(tenant=tenant)
        holder = services.request_secret_get(tenant=tenant)
        expires = holder.previous_secret_expires_at if holder.previous_secret else None
        return Response(
            WebhookSecretSerializer(
                {"object": "webhook_secret", "secret": secret, "previous_secret_expires_at": _ts(expires)}
            ).data
        )
