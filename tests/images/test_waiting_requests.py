"""Requests that wait for their job (issue 20): the per-process cap (503 `server_busy`
at once, cheap requests still answered) and clients that leave (no job and no hold
before it starts; a started job runs, is charged and is read back by its key).

The client's connection is a real socket pair put where gunicorn puts it
(`environ["gunicorn.socket"]`); closing the far end is the client leaving."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from django.db import connection

from billing.models import CreditAccount, LedgerEntry, UsageRecord
from core import waiting
from images.actors import run_generation
from images.models import Job
from images.services import jobs as job_services
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}  # 16 credits
STREAM = {"model": "gpt-image-1", "prompt": "x", "quality": "low", "stream": True}  # (GPT image models stream)
WAITING_ENDPOINTS = [
    (URL, SMALL),
    (URL, STREAM),
    ("/v1/vision/generate", {"prompt": "x", "size": "256x256"}),
    ("/api/images/generations", {"prompt": "x", "size": "256x256"}),
    ("/api/v1/image/generation", {"model": "dall-e-2", "prompt": "x", "size": "256x256"}),
]


@pytest.fixture
def full(settings):
    """This process's waiting requests are at the cap (WEB_MAX_WAITING = 1, one taken)."""
    settings.WEB_MAX_WAITING = 1
    slot = waiting.waiting_slot_take()
    yield
    slot.release()


@pytest.fixture
def connection_pair():
    """(the server's end, as gunicorn gives it, the client's end)."""
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def account(tenant) -> tuple[int, int]:
    row = CreditAccount.objects.get(tenant=tenant.tenant)
    return row.balance, row.held


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)
    return value


# ---- Admission -----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), WAITING_ENDPOINTS)
def test_a_waiting_request_past_the_cap_is_refused_at_once_with_503(api, parked, tenant, full, path, body):
    response = post_json(api, path, body, tenant)
    assert response.status_code == 503
    error = response.json().get("error") or response.json()["error"]
    assert error["code"] == "server_busy" and error["type"] == "server_error"
    assert response["Retry-After"] == "2" and response["x-should-retry"] == "true"
    assert Job.objects.count() == 0 and account(tenant) == (10_000, 0)
    assert waiting.waiting_count() == 1  # the refused request took no place


def test_requests_that_do_not_wait_are_answered_while_the_cap_is_reached(api, parked, tenant, full):
    assert post_json(api, URL, SMALL, tenant).status_code == 503
    balance = api.get("/v1/balance", **tenant.auth)
    assert balance.status_code == 200 and balance.json()["available"] == 10_000
    assert api.get("/v1/models", **tenant.auth).status_code == 200
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async")  # does not wait: not counted
    assert task.status_code == 202
    assert api.get(f"/v1/images/tasks/{task.json()['id']}", **tenant.auth).status_code == 200
    assert api.get("/v1/usage", **tenant.auth).status_code == 200


def test_a_waiting_place_is_given_back_when_the_answer_or_the_stream_ends(api, worker, tenant, settings):
    settings.WEB_MAX_WAITING = 1
    for _ in range(2):  # the second would be refused if the first kept its place
        assert post_json(api, URL, SMALL, tenant).status_code == 200
    stream = post_json(api, URL, STREAM, tenant)
    assert stream.status_code == 200 and waiting.waiting_count() == 1  # held while the stream is open
    assert b"image_generation.completed" in b"".join(stream.streaming_content)
    assert waiting.waiting_count() == 0
    assert post_json(api, URL, SMALL, tenant).status_code == 200
    refused = post_json(api, URL, {**SMALL, "model": "no-such-model"}, tenant)
    assert refused.status_code == 400 and waiting.waiting_count() == 0  # a refusal gives it back too


# ---- Clients that leave -------------------------------------------------------------------


def test_a_client_gone_before_the_hold_gets_no_job_and_no_charge(api, parked, tenant, connection_pair):
    server, client = connection_pair
    client.close()
    headers = {"gunicorn.socket": server, "HTTP_IDEMPOTENCY_KEY": "gone-early"}
    response = post_json(api, URL, SMALL, tenant, **headers)
    assert response.status_code == 499 and response.json()["error"]["code"] == "client_disconnected"
    assert Job.objects.count() == 0 and account(tenant) == (10_000, 0)
    assert not LedgerEntry.objects.filter(kind="hold").exists()
    # The key was not used up: the client's retry runs afresh.
    retry = post_json(api, URL, SMALL, tenant, HTTP_IDEMPOTENCY_KEY="gone-early", HTTP_PREFER="respond-async")
    assert retry.status_code == 202 and account(tenant) == (10_000, 16)


def _post_in_thread(api, tenant, sock, **headers) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def post() -> None:
        try:
            result["response"] = post_json(api, URL, SMALL, tenant, **{"gunicorn.socket": sock, **headers})
        finally:
            connection.close()

    thread = threading.Thread(target=post)
    thread.start()
    return thread, result


def test_a_client_that_leaves_while_its_job_is_queued_is_not_charged(
    api, transactional_db, parked, tenant, settings, connection_pair
):
    settings.JOB_WAIT_SECONDS = 30
    server, client = connection_pair
    thread, result = _post_in_thread(api, tenant, server, HTTP_IDEMPOTENCY_KEY="sdk-timeout-1")
    job = wait_for(lambda: Job.objects.first())
    assert account(tenant) == (10_000, 16)  # waiting, its credits held
    client.close()  # the SDK timed out
    thread.join(timeout=10)
    assert not thread.is_alive() and result["response"].status_code == 499
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("cancelled", "client_disconnected")
    assert account(tenant) == (10_000, 0)
    assert sorted(LedgerEntry.objects.filter(job=job).values_list("kind", flat=True)) == ["hold", "release"]
    usage = UsageRecord.objects.get(job=job)
    assert (usage.outcome, usage.credits_charged) == ("cancelled", 0)
    task = api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()
    assert task["status"] == "cancelled" and task["error"]["code"] == "client_disconnected"
    run_generation.fn(str(job.pk))  # its message reaches a worker later: nothing runs, nothing is charged
    job.refresh_from_db()
    assert job.status == "cancelled" and job.attempts == 0 and account(tenant) == (10_000, 0)
    # The SDK's retry with the same Idempotency-Key is a new request, not the cancelled one.
    retry = post_json(api, URL, SMALL, tenant, HTTP_IDEMPOTENCY_KEY="sdk-timeout-1", HTTP_PREFER="respond-async")
    assert retry.status_code == 202 and retry.json()["id"] != str(job.pk)


def test_a_client_that_leaves_a_stream_before_its_job_starts_is_not_charged(
    api, transactional_db, parked, tenant, settings, connection_pair
):
    settings.JOB_WAIT_SECONDS = 30
    server, client = connection_pair
    response = post_json(api, URL, STREAM, tenant, **{"gunicorn.socket": server})
    assert response.status_code == 200 and account(tenant)[1] > 0  # its credits held
    client.close()
    body = b"".join(response.streaming_content)  # ends soon after the client left
    assert b"completed" not in body
    job = Job.objects.get()
    assert (job.status, job.error_code) == ("cancelled", "client_disconnected")
    assert account(tenant) == (10_000, 0) and waiting.waiting_count() == 0


def test_a_client_that_leaves_after_its_job_started_pays_and_reads_it_by_its_key(
    api, transactional_db, parked, tenant, settings, connection_pair
):
    settings.JOB_WAIT_SECONDS = 30
    server, client = connection_pair
    thread, result = _post_in_thread(api, tenant, server, HTTP_IDEMPOTENCY_KEY="sdk-timeout-2")
    job = wait_for(lambda: Job.objects.first())
    assert job_services.job_start(job_id=job.pk) is not None  # a worker took it
    client.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and result["response"].status_code == 499  # stopped waiting
    job.refresh_from_db()
    assert job.status == "running" and account(tenant) == (10_000, 16)
    # The SDK's retry meanwhile: in progress (409, retried by the SDK), never a second job.
    again = post_json(api, URL, SMALL, tenant, HTTP_IDEMPOTENCY_KEY="sdk-timeout-2")
    assert again.status_code == 409 and Job.objects.count() == 1
    run_generation.fn(str(job.pk))  # the worker finishes it
    job.refresh_from_db()
    assert job.status == "succeeded" and account(tenant) == (10_000 - 16, 0)
    replay = post_json(api, URL, SMALL, tenant, HTTP_IDEMPOTENCY_KEY="sdk-timeout-2")
    assert replay.status_code == 200 and replay["Idempotent-Replayed"] == "true"
    assert len(replay.json()["data"]) == 1 and replay["x-credits-charged"] == "16"
    task = api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()
    assert task["status"] == "succeeded" and Job.objects.count() == 1 and account(tenant) == (10_000 - 16, 0)
