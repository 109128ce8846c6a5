"""The money path: holds, captures, releases, the ledger and reconcile."""

from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.db import connection

from billing.models import CreditAccount, Hold, LedgerEntry, UsageRecord
from billing.selectors import ledger_reconcile
from images.actors import run_generation
from images.models import GeneratedImage, Job
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}  # 16 credits


def balance(tenant) -> tuple[int, int]:
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    return account.balance, account.held


def queued_job(api, tenant, settings) -> Job:
    """Submit to a parked queue: the job is priced, held and left queued."""
    assert post_json(api, URL, SMALL, tenant).status_code == 504
    return Job.objects.get(tenant=tenant.tenant, status="queued")


def test_hold_is_taken_at_submission_and_captured_on_success(api, transactional_db, parked, tenant, settings):
    job = queued_job(api, tenant, settings)
    assert balance(tenant) == (10_000, 16)
    assert job.hold.status == "open" and job.quote == 16
    run_generation.fn(str(job.pk))
    job.refresh_from_db()
    assert job.status == "succeeded" and job.images.count() == 1
    assert balance(tenant) == (10_000 - 16, 0)
    kinds = list(LedgerEntry.objects.filter(job=job).order_by("id").values_list("kind", "amount", "held_delta"))
    assert kinds == [("hold", 0, 16), ("capture", -16, -16)]
    assert ledger_reconcile() == []


def test_actor_running_twice_charges_once(api, transactional_db, parked, tenant, settings):
    job = queued_job(api, tenant, settings)
    run_generation.fn(str(job.pk))
    run_generation.fn(str(job.pk))  # a redelivered message
    assert balance(tenant) == (10_000 - 16, 0)
    assert LedgerEntry.objects.filter(job=job, kind="capture").count() == 1
    assert GeneratedImage.objects.filter(job=job).count() == 1
    assert Job.objects.get(pk=job.pk).attempts == 1


def test_two_workers_racing_on_one_job_charge_once(api, transactional_db, parked, tenant, settings):
    job = queued_job(api, tenant, settings)
    errors = []

    def run():
        try:
            run_generation.fn(str(job.pk))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert Job.objects.get(pk=job.pk).status == "succeeded"
    assert balance(tenant) == (10_000 - 16, 0)
    assert LedgerEntry.objects.filter(job=job, kind="capture").count() == 1
    assert GeneratedImage.objects.filter(job=job).count() == 1
    assert ledger_reconcile() == []


def test_job_past_its_deadline_is_swept_and_released(api, transactional_db, parked, tenant, settings):
    from datetime import timedelta

    from django.utils import timezone

    from images.services.jobs import jobs_sweep

    job = queued_job(api, tenant, settings)
    Job.objects.filter(pk=job.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    assert jobs_sweep() == 1
    assert jobs_sweep() == 0
    job.refresh_from_db()
    assert job.status == "failed" and job.error_code == "deadline_exceeded"
    assert balance(tenant) == (10_000, 0)
    run_generation.fn(str(job.pk))  # a late message for the swept job does nothing
    assert balance(tenant) == (10_000, 0) and Job.objects.get(pk=job.pk).status == "failed"
    assert UsageRecord.objects.get(job=job).outcome == "failed"


def test_sequential_requests_stop_with_402_when_balance_runs_out(api, worker, make_tenant):
    tenant = make_tenant(credits=40)  # covers two 16-credit images, not three
    statuses = [post_json(api, URL, SMALL, tenant).status_code for _ in range(3)]
    assert statuses == [200, 200, 402]
    assert balance(tenant) == (8, 0)


def test_concurrent_requests_never_overspend(api, worker, make_tenant):
    """K images' worth of credits, 3K requests at once: exactly K succeed."""
    k = 3
    tenant = make_tenant(credits=16 * k)
    statuses: list[int] = []
    bodies: list[dict] = []
    lock = threading.Lock()

    def call():
        from rest_framework.test import APIClient

        try:
            response = post_json(APIClient(), URL, SMALL, tenant)
            with lock:
                statuses.append(response.status_code)
                bodies.append(response.json())
        finally:
            connection.close()

    threads = [threading.Thread(target=call) for _ in range(3 * k)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(statuses) == [200] * k + [402] * (2 * k)
    for body in bodies:
        if "error" in body:
            assert body["error"]["code"] == "insufficient_quota"
    assert balance(tenant) == (0, 0)
    assert ledger_reconcile() == []
    assert sum(UsageRecord.objects.filter(tenant=tenant.tenant).values_list("images", flat=True)) == k


def test_reconcile_command_passes_then_names_a_tampered_tenant(api, worker, tenant, capsys):
    post_json(api, URL, SMALL, tenant)
    call_command("billing_reconcile")
    assert "agree" in capsys.readouterr().out
    CreditAccount.objects.filter(tenant=tenant.tenant).update(balance=123_456)
    with pytest.raises(SystemExit) as exit_info:
        call_command("billing_reconcile")
    assert exit_info.value.code == 1
    assert tenant.tenant.name in capsys.readouterr().err


def test_database_refuses_a_hold_beyond_the_balance(transactional_db, tenant):
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        CreditAccount.objects.filter(tenant=tenant.tenant).update(held=10_001)


def test_key_monthly_budget_refuses_that_key_only(api, worker, tenant):
    from accounts.models import APIKey
    from accounts.services import api_key_create

    APIKey.objects.filter(pk=tenant.key.pk).update(monthly_credit_limit=20)
    assert post_json(api, URL, SMALL, tenant).status_code == 200
    refused = post_json(api, URL, SMALL, tenant)
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "key_budget_exceeded"
    _, other = api_key_create(tenant=tenant.tenant, name="other")
    assert post_json(api, URL, SMALL, HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 200
    assert Hold.objects.filter(tenant=tenant.tenant, status="captured").count() == 2
