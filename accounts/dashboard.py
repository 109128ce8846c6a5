"""The tenant dashboard (/dashboard/) and the operator overview (/admin/overview/).

Thin HTML adapters over the same services and selectors as the API: a signed-in user
sees the tenant of their first membership and nothing else (another tenant's job is a
404); creating and revoking keys needs the owner or admin role; the playground submits
a real, charged job exactly as POST /v1/images/generations does (without a key).
"""
from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta
from functools import wraps
from typing import Any, Callable

from django.contrib import messages
from django.contrib.admin import site as admin_site
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts import selectors as account_selectors
from accounts import services as account_services
from core.errors import APIError, InvalidRequest, NotFound, json_error_response
from accounts.models import Membership

LOGIN_URL = "/dashboard/login/"
PLAYGROUND_ENDPOINT = "/dashboard/playground"
MANAGER_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)
USAGE_DAYS = 30


def membership_for(user) -> Membership | None:
    """The membership the dashboard shows: the user's first (lowest tenant id)."""
    return (Membership.objects.filter(user=user).select_related("tenant").order_by("tenant_id").first()
            if user.is_authenticated else None)


def member_required(view: Callable) -> Callable:
    """Signed in and a member of a tenant; sets request.membership and request.tenant."""

    @login_required(login_url=LOGIN_URL)
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any):
        membership = membership_for(request.user)
        if membership is None:
            return render(request, "dashboard/no_tenant.html", status=403)
        request.membership, request.tenant = membership, membership.tenant
        return view(request, *args, **kwargs)

    return wrapper


def _can_manage(request: HttpRequest) -> bool:
    return request.membership.role in MANAGER_ROLES


def _base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/")


class LoginView(auth_views.LoginView):
    template_name = "dashboard/login.html"
    redirect_authenticated_user = True
    next_page = "/dashboard/"


logout_view = auth_views.LogoutView.as_view(next_page=LOGIN_URL)


@member_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    from billing.services import account_for
    from images.models import Job

    account = account_for(tenant=request.tenant)
    in_flight = Job.objects.filter(tenant=request.tenant, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).count()
    return render(request, "dashboard/home.html", {"account": account, "in_flight": in_flight, "nav": "home"})


@member_required
def keys(request: HttpRequest) -> HttpResponse:
    """GET lists the tenant's keys; POST creates one and shows the raw key once."""
    if request.method == "POST":
        if not _can_manage(request):
            return render(request, "dashboard/forbidden.html", status=403)
        name = (request.POST.get("name") or "").strip()[:50] or "default"
        key, raw = account_services.api_key_create(tenant=request.tenant, name=name,
                                                   created_by=request.user.get_username())
        # Rendered, not redirected: the raw key exists in this response only.
        return render(request, "dashboard/key_created.html", {"key": key, "raw": raw, "nav": "keys"})
    return render(request, "dashboard/keys.html", {
        "keys": account_selectors.key_list(tenant=request.tenant), "can_manage": _can_manage(request), "nav": "keys"})


@member_required
@require_POST
def key_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    if not _can_manage(request):
        return render(request, "dashboard/forbidden.html", status=403)
    key = account_selectors.key_get(tenant=request.tenant, prefix=prefix)
    if key is None:
        raise Http404("No such key.")
    account_services.api_key_revoke(key=key)
    messages.success(request, f"Key {key.prefix}… revoked.")
    return redirect("dashboard:keys")


def _usage_rows(request: HttpRequest) -> tuple[date, date, list[dict]]:
    from billing.selectors import usage_summary

    end = timezone.now().date()
    start = end - timedelta(days=USAGE_DAYS - 1)
    rows = usage_summary(tenant=request.tenant, start=start, end=end, group_by="day")
    return start, end, rows


def bar_chart(rows: list[dict], *, start: date, days: int, field: str, width: int = 720, height: int = 160) -> dict:
    """Bars for a server-rendered SVG: one slot per day, zero-filled."""
    by_day = {row["day"]: row[field] for row in rows}
    values = [(start + timedelta(days=i), by_day.get((start + timedelta(days=i)).isoformat(), 0)) for i in range(days)]
    peak = max([v for _, v in values] + [1])
    slot = width / days
    bars = []
    for i, (day, value) in enumerate(values):
        h = round((height - 20) * value / peak, 1)
        bars.append({"x": round(i * slot + 1, 1), "y": round(height - 16 - h, 1), "w": round(slot - 2, 1), "h": h,
                     "day": day.isoformat(), "value": value, "label": day.day if day.day in (1, 15) or i == 0 else ""})
    return {"bars": bars, "peak": peak, "width": width, "height": height, "field": field}


@member_required
@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    start, end, rows = _usage_rows(request)
    charts = [bar_chart(rows, start=start, days=USAGE_DAYS, field=field) for field in ("images", "credits")]
    totals = {k: sum(r[k] for r in rows) for k in ("requests", "images", "credits")}
    return render(request, "dashboard/usage.html", {"rows": rows, "charts": charts, "totals": totals, "start": start,
                                                    "end": end, "nav": "usage"})


@member_required
@require_GET
def usage_csv(request: HttpRequest) -> HttpResponse:
    start, end, rows = _usage_rows(request)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["day", "requests", "succeeded", "failed", "refused", "images",
                                                "pixels", "credits"])
    writer.writeheader()
    writer.writerows(rows)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{start}-{end}-day.csv"'
    return response


@member_required
@require_GET
def jobs(request: HttpRequest) -> HttpResponse:
    from images.files import image_url
    from images.models import Job

    recent = list(Job.objects.filter(tenant=request.tenant).select_related("model")
                  .prefetch_related("images").order_by("-created_at")[:50])
    base = _base_url(request)
    items = [{"job": job, "thumb": image_url(job.images.all()[0], base_url=base) if job.images.all() else None}
             for job in recent]
    return render(request, "dashboard/jobs.html", {"items": items, "nav": "jobs"})


@member_required
@require_GET
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    from images import selectors as image_selectors
    from images.files import image_url

    job = image_selectors.job_get(tenant=request.tenant, job_id=job_id)
    if job is None:
        raise Http404("No such job.")  # another tenant's job looks exactly like a missing one
    base = _base_url(request)
    images = [image_url(image, base_url=base) for image in job.images.all()]
    return render(request, "dashboard/job_detail.html", {"job": job, "images": images, "nav": "jobs"})


@member_required
@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    from images import selectors as image_selectors

    return render(request, "dashboard/playground.html",
                  {"models": image_selectors.image_model_list(), "nav": "playground",
                   "sizes": ["256x256", "512x512", "1024x1024"]})


@member_required
@require_POST
def playground_submit(request: HttpRequest) -> JsonResponse:
    """POST {prompt, model, size} (JSON, CSRF header): submit a charged job; 202 + task."""
    from images.services import generation as image_generation, moderation as image_moderation
    from images.api import model_for_request, task_object
    from images.validation import GenerationRequestSerializer, generation_params_resolve

    try:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            raise InvalidRequest("The body must be JSON.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
        fields = {k: body[k] for k in ("prompt", "model", "size") if body.get(k) is not None}
        serializer = GenerationRequestSerializer(data={**fields, "n": 1})
        if not serializer.is_valid():
            param, problems = next(iter(serializer.errors.items()))
            raise InvalidRequest(f"'{param}': {problems[0]}", param=param, code="invalid_value")
        data = {**serializer.validated_data, "stream": False}
        model = model_for_request(data=data, api_key=None)
        params = generation_params_resolve(data=data, model=model)
        image_moderation.prompt_moderate(tenant=request.tenant, api_key=None, model=model, prompt=params.prompt,
                                       requested=params.moderation, endpoint=PLAYGROUND_ENDPOINT,
                                       request_id=getattr(request, "request_id", ""))
        job = image_generation.generation_submit(tenant=request.tenant, api_key=None, model=model, params=params,
                                               endpoint=PLAYGROUND_ENDPOINT)
    except APIError as exc:
        return json_error_response(exc)
    return JsonResponse(task_object(job=job, base_url=_base_url(request)), status=202)


@member_required
@require_GET
def playground_task(request: HttpRequest, job_id: str) -> JsonResponse:
    from images import selectors as image_selectors
    from images.api import task_object

    job = image_selectors.job_get(tenant=request.tenant, job_id=job_id)
    if job is None:
        return json_error_response(NotFound("No such task.", param="id", code="not_found"))
    return JsonResponse(task_object(job=job, base_url=_base_url(request)))


# ---- Operator overview (/admin/overview/, staff only through admin.site.admin_view) ----

def _usage_window(since) -> dict[str, Any]:
    from billing.models import UsageRecord

    row = UsageRecord.objects.filter(created_at__gte=since).aggregate(
        requests=Count("id"), images=Sum("images"), credits=Sum("credits_charged"),
        succeeded=Count("id", filter=Q(outcome=UsageRecord.Outcome.SUCCEEDED)),
        failed=Count("id", filter=Q(outcome=UsageRecord.Outcome.FAILED)))
    row = {k: int(v or 0) for k, v in row.items()}
    finished = row["succeeded"] + row["failed"]
    row["failure_rate"] = f"{100 * row['failed'] / finished:.1f} %" if finished else "–"
    return row


def overview_stats(now=None) -> dict[str, Any]:
    """Today's and this month's traffic (UTC), the queue, and GPU time per model."""
    from images.models import Job

    now = now or timezone.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    gpu = (Job.objects.filter(created_at__gte=month, gpu_ms__isnull=False).values("model__public_id")
           .annotate(gpu_ms=Sum("gpu_ms"), jobs=Count("id")).order_by("-gpu_ms"))
    return {
        "today": _usage_window(today), "month": _usage_window(month),
        "queued": Job.objects.filter(status=Job.Status.QUEUED).count(),
        "running": Job.objects.filter(status=Job.Status.RUNNING).count(),
        "gpu": [{"model": r["model__public_id"], "jobs": r["jobs"], "seconds": round(r["gpu_ms"] / 1000, 1)}
                for r in gpu],
        "month_start": month.date(), "now": now,
    }


def admin_overview(request: HttpRequest) -> HttpResponse:
    context = {**admin_site.each_context(request), "title": "Overview", "stats": overview_stats()}
    return render(request, "admin/overview.html", context)
