"""/dashboard/webhooks/ (issue 24): the tenant's webhook endpoints and their delivery
log, for its members; owners and admins create, enable or disable, delete endpoints
and send deliveries again. The secret of a new endpoint is shown on the page that
created it, once. The rules are images.services.webhooks'; this is an adapter."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from core.errors import APIError
from dashboard.views import _can_manage, member_required

DELIVERY_ROWS = 50


def _page(request: HttpRequest, *, status: int = 200, **extra) -> HttpResponse:
    from images.models import WEBHOOK_EVENTS, WebhookDelivery, WebhookEndpoint

    context = {
        "endpoints": WebhookEndpoint.objects.filter(tenant=request.tenant),
        "deliveries": WebhookDelivery.objects.filter(tenant=request.tenant).select_related("endpoint")[:DELIVERY_ROWS],
        "events": WEBHOOK_EVENTS,
        "can_manage": _can_manage(request),
        "nav": "webhooks",
        **extra,
    }
    return render(request, "dashboard/webhooks.html", context, status=status)


@member_required
def webhooks(request: HttpRequest) -> HttpResponse:
    """GET: endpoints and the latest deliveries. POST (owners, admins): a new endpoint,
    rendered (not redirected) so that its secret is on this page only."""
    from images.services.webhooks import endpoint_create

    if request.method != "POST":
        return _page(request)
    if not _can_manage(request):
        return render(request, "dashboard/forbidden.html", status=403)
    try:
        endpoint, secret = endpoint_create(
            tenant=request.tenant,
            url=(request.POST.get("url") or "").strip(),
            events=request.POST.getlist("events"),
            description=(request.POST.get("description") or "").strip(),
        )
    except APIError as exc:
        return _page(request, status=400, form_error=exc.message, form_url=request.POST.get("url", ""))
    return _page(request, created=endpoint, secret=secret)


def _endpoint(request: HttpRequest, endpoint_id: str):
    from images.models import WebhookEndpoint

    try:
        return WebhookEndpoint.objects.get(pk=endpoint_id, tenant=request.tenant)
    except Exception as exc:  # (missing, another tenant's, or not a UUID: the same 404)
        raise Http404("No such endpoint.") from exc


@member_required
@require_POST
def webhook_toggle(request: HttpRequest, endpoint_id: str) -> HttpResponse:
    from images.services.webhooks import endpoint_update

    if not _can_manage(request):
        return render(request, "dashboard/forbidden.html", status=403)
    endpoint = _endpoint(request, endpoint_id)
    endpoint_update(endpoint=endpoint, changes={"enabled": not endpoint.enabled})
    messages.success(request, f"{endpoint.url} {'enabled' if endpoint.enabled else 'disabled'}.")
    return redirect("dashboard:webhooks")


@member_required
@require_POST
def webhook_delete(request: HttpRequest, endpoint_id: str) -> HttpResponse:
    from images.services.webhooks import endpoint_delete

    if not _can_manage(request):
        return render(request, "dashboard/forbidden.html", status=403)
    endpoint = _endpoint(request, endpoint_id)
    endpoint_delete(endpoint=endpoint)
    messages.success(request, f"{endpoint.url} deleted.")
    return redirect("dashboard:webhooks")


@member_required
@require_POST
def webhook_delivery_retry(request: HttpRequest, delivery_id: str) -> HttpResponse:
    """ "Send again": the same event, signed afresh, now."""
    from images.models import WebhookDelivery
    from images.services.webhooks import delivery_retry

    if not _can_manage(request):
        return render(request, "dashboard/forbidden.html", status=403)
    try:
        delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id, tenant=request.tenant)
    except Exception as exc:
        raise Http404("No such delivery.") from exc
    try:
        delivery_retry(delivery=delivery)
    except APIError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Event {delivery.event_id} queued to be sent again.")
    return redirect("dashboard:webhooks")
