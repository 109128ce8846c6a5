from django.contrib import admin
from django.http import HttpRequest
from django.urls import include, path, re_path
from django.views import defaults
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

import api_schema  # noqa: F401  (annotates the API views for the OpenAPI schema)
from accounts import api as accounts_api
from accounts import dashboard
from core.errors import APIError, NotFound, json_error_response
from billing import api as billing_api
from health import healthz
from images import api as images_api
from images import vendors

urlpatterns = [
    path("healthz", healthz),
    path("admin/overview/", admin.site.admin_view(dashboard.admin_overview), name="admin-overview"),
    path("admin/", admin.site.urls),
    path("dashboard/", include("accounts.dashboard_urls")),
    path("docs/", SpectacularSwaggerView.as_view(url_name="openapi-schema"), name="api-docs"),
    path("v1/openapi.json", SpectacularJSONAPIView.as_view(), name="openapi-schema"),
    path("v1/images/generations", images_api.ImageGenerationView.as_view()),
    path("v1/images/edits", images_api.ImageEditView.as_view()),
    path("v1/images/variations", images_api.ImageVariationView.as_view()),
    path("v1/images/tasks/<str:task_id>", images_api.TaskDetailView.as_view()),
    path("v1/vision/generate", vendors.VisionGenerateView.as_view()),
    path("api/images/generations", vendors.AigneGenerationView.as_view()),
    path("api/v1/image/generation", vendors.ResellerGenerationView.as_view()),
    path("v1/keys", accounts_api.KeyListView.as_view()),
    path("v1/keys/<str:prefix>", accounts_api.KeyDetailView.as_view()),
    path("v1/balance", billing_api.BalanceView.as_view()),
    path("v1/usage", billing_api.UsageView.as_view()),
    path("v1/models", images_api.ModelListView.as_view()),
    path("v1/models/<str:model_id>", images_api.ModelDetailView.as_view()),
    path("v1/files/<str:token>", images_api.ImageFileView.as_view()),
    # Anything else under the API prefixes: a 404 in the envelope, DEBUG or not.
    re_path(r"^(?:v1|api)/.*$", images_api.UnknownRouteView.as_view()),
]

API_PREFIXES = ("/v1/", "/api/")


def handler404(request: HttpRequest, exception: Exception | None = None):
    if not request.path.startswith(API_PREFIXES):
        return defaults.page_not_found(request, exception)
    return json_error_response(NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"))


def handler500(request: HttpRequest):
    if not request.path.startswith(API_PREFIXES):
        return defaults.server_error(request)
    return json_error_response(APIError("The server had an error while processing your request.",
                                        status_code=500, type="server_error", code="internal_error"))
