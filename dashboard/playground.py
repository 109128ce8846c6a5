"""The dashboard playground's JSON endpoints (session + CSRF; same flow, same rules as
the API): POST /dashboard/api/generations and GET /dashboard/api/tasks/{id}.

Built on images.charged's ChargedViewSet (the one charged-generation flow), so a playground
job is validated, rate-limited, held and charged exactly as an API call; this module
only adds the form's fields and the session authentication."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response

from images.charged import ChargedViewSet, Renderer, base_url, openai_images_body, tenant_job
from images.fields import StrictCharField, StrictChoiceField, StrictIntegerField
from images.mappers import validated
from images.serializers import task_body
from images.services.generation import GenerationRequest
from images.validation import ExtensionFields


class PlaygroundRequestSerializer(ExtensionFields):
    """The playground form: a prompt, a model, and what the model's profile offers (the
    page reads them from dashboard.views.playground_models): size, quality, n,
    output_format, style, plus seed and negative_prompt (ExtensionFields). The profile's
    rules refuse what the model does not take, as on the API."""

    prompt = StrictCharField(trim_whitespace=False, allow_blank=True)
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    size = StrictCharField(required=False, allow_null=True)
    quality = StrictCharField(required=False, allow_null=True)
    n = StrictIntegerField(required=False, allow_null=True)
    output_format = StrictChoiceField(choices=("png", "jpeg", "webp"), required=False, allow_null=True)
    style = StrictCharField(required=False, allow_null=True)


PLAYGROUND_ENDPOINT = "/dashboard/playground"


def playground_mapper(request: Request) -> GenerationRequest:
    """The validated form as a GenerationRequest for PLAYGROUND_ENDPOINT (n defaults to 1);
    a bad field is a 400 in the OpenAI envelope (images.mappers.validated)."""
    fields = validated(PlaygroundRequestSerializer, request.data)
    return GenerationRequest(endpoint=PLAYGROUND_ENDPOINT, fields={**fields, "n": fields.get("n") or 1})


PLAYGROUND = Renderer(body=openai_images_body, always_async=True)


class PlaygroundViewSet(ChargedViewSet):
    """POST /dashboard/api/generations (JSON, session + CSRF header): a charged job for
    the signed-in member's tenant, under the same rules as an API key (their own
    rate-limit bucket, `DEFAULT_MEMBER_RPM`, plus the tenant's); answers 202 + task.
    GET /dashboard/api/tasks/{id} reads it back."""

    authentication_classes = [SessionAuthentication]
    lookup_field = "task_id"
    lookup_value_regex = "[^/]+"

    @extend_schema(exclude=True)
    def create(self, request: Request) -> Response:
        return self.charged(request, playground_mapper, PLAYGROUND)

    @extend_schema(exclude=True)
    def retrieve(self, request: Request, task_id: str) -> Response:
        return Response(task_body(job=tenant_job(request, task_id), base_url=base_url(request)))
