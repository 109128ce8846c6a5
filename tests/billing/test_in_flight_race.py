"""The tenant's in-flight cap under a real race: many requests at once, each on its own
thread and database connection, asking for async jobs. The account row lock makes the
cap exact: k accepted, every other request refused with the cap's 429, and nothing held,
queued or charged for the refused. Meaningful on PostgreSQL (row locks under READ
COMMITTED); it runs on SQLite too, where writes are serialised anyway."""

from __future__ import annotations

import threading
import uuid

from django.db import connection
from rest_framework.test import APIClient

from accounts.models import Tenant
from billing.models import CreditAccount, Hold, LedgerEntry, UsageRecord
from billing.selectors import ledger_reconcile
from images.models import Job
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}  # 16 credits


def test_in_flight_cap_admits_exactly_k_of_a_simultaneous_burst(transactional_db, parked, make_tenant):
    k, attempts = 3, 12
    tenant = make_tenant(credits=10_000)
    Tenant.objects.filter(pk=tenant.tenant.pk).update(max_concurrent_jobs=k)
    barrier = threading.Barrier(attempts)
    answers: list[tuple[int, dict, str | None]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            client = APIClient()
            barrier.wait(timeout=60)  # all at once
            response = post_json(client, URL, SMALL, tenant, HTTP_PREFER="respond-async")
            with lock:
                answers.append((response.status_code, response.json(), response.get("Retry-After")))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            connection.close()  # each thread had its own connection

    threads = [threading.Thread(target=call) for _ in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert sorted(status for status, _, _ in answers) == [202] * k + [429] * (attempts - k)
    for status, body, retry_after in answers:
        if status == 429:  # the in-flight cap's refusal, not the requests-per-minute limiter's
            assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "rate_limit_exceeded"
            assert f"may have {k} jobs queued or running" in body["error"]["message"]
            assert retry_after == "2"
    accepted = {body["id"] for status, body, _ in answers if status == 202}
    assert set(Job.objects.filter(tenant=tenant.tenant).values_list("pk", flat=True)) == {
        uuid.UUID(i) for i in accepted
    }
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (10_000, 16 * k)
    assert Hold.objects.filter(tenant=tenant.tenant, status="open").count() == k
    assert LedgerEntry.objects.filter(tenant=tenant.tenant, kind="hold").count() == k
    refused = UsageRecord.objects.filter(tenant=tenant.tenant, outcome="refused")
    assert refused.count() == attempts - k and set(refused.values_list("error_code", flat=True)) == {
        "rate_limit_exceeded"
    }
    assert not refused.filter(job__isnull=False).exists()
    assert ledger_reconcile() == []
