"""GET /v1/usage accounts for every outcome: each request falls in exactly one count
column and every charged credit in one credits column, so the totals reconcile with
the ledger's captures (succeeded, failed, cancelled with the steps it ran, cancelled
before it started, refused, still in flight)."""

from __future__ import annotations

import csv
import io

from django.db.models import Sum

from billing.models import LedgerEntry
from images.actors import run_generation
from images.models import Job
from images.services.jobs import job_fail, job_progress, job_start
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}  # 16 credits, 4 steps

COUNTS = ("succeeded", "failed", "cancelled", "refused", "pending")
CREDITS = ("credits_succeeded", "credits_cancelled")


def _submit(api, tenant) -> str:
    response = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async")
    assert response.status_code == 202
    return response.json()["id"]


def _captured(tenant) -> int:
    total = LedgerEntry.objects.filter(tenant=tenant.tenant, kind="capture").aggregate(s=Sum("amount"))["s"]
    return -(total or 0)


def test_usage_totals_equal_the_ledger_captures_for_every_outcome(api, transactional_db, parked, make_tenant):
    tenant = make_tenant(credits=16 * 6)
    succeeded = _submit(api, tenant)
    run_generation.fn(succeeded)  # the worker, in this thread
    failed = _submit(api, tenant)
    job_fail(job_id=failed, code="generation_failed", message="boom")
    cancelled_midway = _submit(api, tenant)
    job_start(job_id=cancelled_midway)
    job_progress(job_id=cancelled_midway, steps_done=2)  # 2 of 4 steps: ceil(16 * 2 / 4) = 8 credits
    assert api.delete(f"/v1/images/tasks/{cancelled_midway}", **tenant.auth).json()["credits_charged"] == 8
    cancelled_queued = _submit(api, tenant)
    assert api.delete(f"/v1/images/tasks/{cancelled_queued}", **tenant.auth).json()["credits_charged"] == 0
    in_flight = _submit(api, tenant)
    assert post_json(api, URL, {**SMALL, "n": 9}, tenant).status_code == 402  # refused
    assert Job.objects.get(pk=in_flight).status == "queued"

    body = api.get("/v1/usage", **tenant.auth).json()
    totals = body["totals"]
    assert {k: totals[k] for k in COUNTS} == {
        "succeeded": 1,
        "failed": 1,
        "cancelled": 2,
        "refused": 1,
        "pending": 1,
    }
    assert totals["requests"] == 6 == sum(totals[k] for k in COUNTS)
    assert (totals["credits_succeeded"], totals["credits_cancelled"]) == (16, 8)
    assert totals["credits"] == 16 + 8 == sum(totals[k] for k in CREDITS) == _captured(tenant)
    for row in body["data"]:  # every row reconciles too
        assert row["requests"] == sum(row[k] for k in COUNTS)
        assert row["credits"] == sum(row[k] for k in CREDITS)

    for group_by in ("day", "model", "key"):
        raw = api.get("/v1/usage", {"format": "csv", "group_by": group_by}, **tenant.auth).content.decode()
        rows = list(csv.DictReader(io.StringIO(raw)))
        assert len(rows) == 1
        assert {k: int(rows[0][k]) for k in (*COUNTS, *CREDITS, "requests", "credits")} == {
            k: totals[k] for k in (*COUNTS, *CREDITS, "requests", "credits")
        }


def test_dashboard_usage_csv_has_the_cancelled_columns(api, transactional_db, parked, make_tenant):
    from django.contrib.auth import get_user_model

    from accounts.models import Membership

    tenant = make_tenant()
    cancelled = _submit(api, tenant)
    job_start(job_id=cancelled)
    job_progress(job_id=cancelled, steps_done=1)
    api.delete(f"/v1/images/tasks/{cancelled}", **tenant.auth)
    user = get_user_model().objects.create_user(username="usage-member", password="x-long-enough-1")
    Membership.objects.create(user=user, tenant=tenant.tenant, role=Membership.Role.MEMBER)
    api.force_login(user)
    response = api.get("/dashboard/usage.csv")
    assert response.status_code == 200
    (row,) = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert (row["cancelled"], row["credits_cancelled"], row["credits"]) == ("1", "4", "4")
    page = api.get("/dashboard/usage/")
    assert page.status_code == 200 and b"Cancelled" in page.content
