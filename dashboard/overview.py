"""The operator overview (/admin/overview/, staff only through admin.site.admin_view):
today's and this month's traffic, the queue, GPU time per model and the workers."""

from __future__ import annotations

from typing import Any

from django.contrib.admin import site as admin_site
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone


def overview_stats(now=None) -> dict[str, Any]:
    """Today's and this month's traffic (UTC), the queue, and GPU time per model."""
    from billing.selectors import usage_window
    from core.heartbeats import worker_heartbeats
    from images.selectors import gpu_time_by_model, jobs_by_status

    now = now or timezone.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    counts = jobs_by_status()
    return {
        "today": usage_window(since=today),
        "month": usage_window(since=month),
        "queued": counts.get("queued", 0),
        "running": counts.get("running", 0),
        "gpu": gpu_time_by_model(since=month),
        "month_start": month.date(),
        "now": now,
        "workers": worker_heartbeats(now=now),  # core/heartbeats.py: each worker process, quiet ones flagged
    }


def admin_overview(request: HttpRequest) -> HttpResponse:
    context = {**admin_site.each_context(request), "title": "Overview", "stats": overview_stats()}
    return render(request, "admin/overview.html", context)
