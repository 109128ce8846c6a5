from __future__ import annotations

from billing.models import CreditAccount, LedgerEntry
from images.actors import run_generation
from images.models import Job
from tests.conftest import post_json

URL = "/v1/images/generations"
BODY = {"model": "dall-e-2", "prompt": "once", "size": "256x256", "response_format": "b64_json", "seed": 7}


def test_repeat_with_same_key_returns_the_stored_response_and_charges_once(api, worker, tenant):
    first = post_json(api, URL, BODY, tenant, HTTP_IDEMPOTENCY_KEY="order-1")
    second = post_json(api, URL, BODY, tenant, HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == second.status_code == 200
    assert second["Idempotent-Replayed"] == "true"
    assert first.json()["data"] == second.json()["data"]
    assert Job.objects.filter(tenant=tenant.tenant).count() == 1
    assert LedgerEntry.objects.filter(tenant=tenant.tenant, kind="capture").count() == 1
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == 10_000 - 16


def test_same_key_with_another_body_is_400(api, worker, tenant):
    post_json(api, URL, BODY, tenant, HTTP_IDEMPOTENCY_KEY="order-2")
    response = post_json(api, URL, {**BODY, "prompt": "twice"}, tenant, HTTP_IDEMPOTENCY_KEY="order-2")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "idempotency_key_reused"


def test_repeat_while_running_is_409_then_the_result(api, transactional_db, parked, tenant, settings):
    settings.JOB_WAIT_SECONDS = 0.05
    assert post_json(api, URL, BODY, tenant, HTTP_IDEMPOTENCY_KEY="order-3").status_code == 504
    busy = post_json(api, URL, BODY, tenant, HTTP_IDEMPOTENCY_KEY="order-3")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "idempotency_request_in_progress"
    job = Job.objects.get(tenant=tenant.tenant)
    run_generation.fn(str(job.pk))  # the worker finishes it
    done = post_json(api, URL, BODY, tenant, HTTP_IDEMPOTENCY_KEY="order-3")
    assert done.status_code == 200 and len(done.json()["data"]) == 1
    assert Job.objects.filter(tenant=tenant.tenant).count() == 1
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == 10_000 - 16


def test_refused_request_keeps_no_result_so_a_retry_can_succeed(api, worker, make_tenant):
    from billing.services import credits_grant

    poor = make_tenant(credits=1)
    assert post_json(api, URL, BODY, poor, HTTP_IDEMPOTENCY_KEY="order-4").status_code == 402
    credits_grant(tenant=poor.tenant, amount=100)
    assert post_json(api, URL, BODY, poor, HTTP_IDEMPOTENCY_KEY="order-4").status_code == 200


def test_keys_are_per_tenant(api, worker, make_tenant):
    a, b = make_tenant(), make_tenant()
    post_json(api, URL, BODY, a, HTTP_IDEMPOTENCY_KEY="shared")
    post_json(api, URL, BODY, b, HTTP_IDEMPOTENCY_KEY="shared")
    assert Job.objects.filter(tenant=b.tenant).count() == 1
