from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.http import HttpRequest
from django.urls import include, path, re_path
from django.views import defaults
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

import api_router
import api_schema  # noqa: F401  (the OpenAPI document's bearer scheme, tags and order)
from billing.payments.webhook import stripe_webhook
from core.errors import APIError, InvalidRequest, NotFound, json_error_response
from core.metrics import metrics_view
from dashboard import overview as dashboard_overview
from dashboard import views as dashboard
from dashboard.playground import PlaygroundViewSet
from health import healthz, readyz
from images import api as images_api
from images import stability

# The admin has no login form of its own: /admin/login/ sends a signed-out visitor to
# LOGIN_URL (/dashboard/login/, then allauth's login stages: the second factor, a
# verified email), as allauth documents; a signed-in non-staff user gets a 403.
admin.site.login = secure_admin_login(admin.site.login)

urlpatterns = [
    # The served address opens the dashboard (sign-in or sign-up); the API lives under /v1.
    path("", RedirectView.as_view(url="/dashboard/", permanent=False)),
    path("favicon.ico", dashboard.favicon, name="favicon"),
    path("healthz", healthz),
    path("readyz", readyz),
    path("metrics", metrics_view),
    path("admin/overview/", admin.site.admin_view(dashboard_overview.admin_overview), name="admin-overview"),
    path("admin/", admin.site.urls),
    path("dashboard/", include("dashboard.urls")),
    path("docs/", SpectacularSwaggerView.as_view(url_name="openapi-schema"), name="api-docs"),
    path("v1/openapi.json", SpectacularJSONAPIView.as_view(), name="openapi-schema"),
    path("webhooks/stripe", stripe_webhook, name="stripe-webhook"),
    path("accounts/", include("allauth.urls")),
    path("v1/user/balance", stability.StabilityBalanceView.as_view()),  # Stability's shape (issue 26)
    path("v1/", include(api_router.v1_router.urls)),
    path("api/", include(api_router.api_router.urls)),
    path("mj/", include(api_router.mj_router.urls)),
    path("dashboard/api/generations", PlaygroundViewSet.as_view({"post": "create"}), name="playground-submit"),
    path(
        "dashboard/api/tasks/<str:task_id>",
        PlaygroundViewSet.as_view({"get": "retrieve"}),
        name="playground-task",
    ),
    # Anything else under the API prefixes: a 404 in the envelope, DEBUG or not.
    re_path(r"^(?:v1|api|mj)/.*$", images_api.UnknownRouteView.as_view()),
    # Stability's v2beta shape (images/stability.py); anything else there: a 404 in its envelope.
    path("v2beta/", include(stability.stability_urls())),
    re_path(r"^v2beta/.*$", stability.StabilityUnknownRouteView.as_view()),
]

API_PREFIXES = ("/v1/", "/api/", "/mj/")


def handler404(request: HttpRequest, exception: Exception | None = None):
    if not request.path.startswith(API_PREFIXES):
        return defaults.page_not_found(request, exception)
    return json_error_response(NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"))


def handler500(request: HttpRequest):
    if not request.path.startswith(API_PREFIXES):
        return defaults.server_error(request)
    return json_error_response(
        APIError(
            "The server had an error while processing your request.",
            status_code=500,
            type="server_error",
            code="internal_error",
        )
    )


def handler400(request: HttpRequest, exception: Exception | None = None):
    """Django's own 400s (a Host header not in ALLOWED_HOSTS, other suspicious requests)
    in the envelope on the API; never a debug page."""
    if not request.path.startswith(API_PREFIXES):
        return defaults.bad_request(request, exception)
    return json_error_response(
        InvalidRequest(
            "The request was malformed (for example its Host header is not one this server answers to).",
            code="bad_request",
        )
    )
