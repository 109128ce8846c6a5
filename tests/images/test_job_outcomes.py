"""What a request that waits on a job hears when the job ends without images (issue 19
item 5): a job that will not run again (cancelled by anyone, out of time, swept) is a
non-retryable 4xx, on every surface that can see it (the synchronous answer, the event
stream, an Idempotency-Key replay, the vendor shapes, the task). Only a transient fault
(the queue was away) keeps a retryable 5xx. One home: images.errors.job_error."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import httpx2
import openai
import pytest
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from images.models import ImageModel, Job
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}
RETRYABLE = {408, 409, 429}


@pytest.fixture
def waiting(parked, transactional_db, settings):
    """Jobs stay queued (no worker takes them) and a synchronous request waits for them
    long enough for another thread to end them."""
    settings.JOB_WAIT_SECONDS = 60


def in_background(tenant, action) -> threading.Thread:
    """Run `action(job)` in another thread as soon as the tenant's job is queued (while
    the request that made it waits)."""

    def run() -> None:
        try:
            deadline = time.monotonic() + 30
            while (job := Job.objects.filter(tenant=tenant.tenant).first()) is None:
                assert time.monotonic() < deadline, "no job was created"
                time.sleep(0.01)
            action(job)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def cancel_via_api(tenant, steps_done: int = 0):
    """The caller's own cancel (DELETE /v1/images/tasks/{id}), after the worker ran
    `steps_done` steps."""
    from images.services.jobs import job_progress, job_start

    def action(job: Job) -> None:
        if steps_done:
            job_start(job_id=job.pk)
            job_progress(job_id=job.pk, steps_done=steps_done)
        answer = APIClient().delete(f"/v1/images/tasks/{job.pk}", **tenant.auth)
        assert answer.status_code == 200, answer.content

    return action


def assert_not_retryable(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert status < 500 and status not in RETRYABLE
    assert response["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["code"] == code
    return error


class CountingTransport(httpx2.WSGITransport):
    """The Django app in-process, counting the requests the SDK sends (a retry would be
    a second POST)."""

    def __init__(self) -> None:
        super().__init__(app=get_wsgi_application())
        self.posts = 0

    def handle_request(self, request):
        if request.method == "POST":
            self.posts += 1
        return super().handle_request(request)


def sdk(tenant, transport: CountingTransport) -> openai.OpenAI:
    # max_retries=2 (the SDK's default): any retry would show in transport.posts.
    return openai.OpenAI(
        api_key=tenant.raw,
        base_url="http://testserver/v1",
        max_retries=2,
        http_client=httpx2.Client(transport=transport, base_url="http://testserver"),
    )


# -- cancelled while a synchronous request waits ------------------------------------------


def test_sdk_request_whose_job_the_caller_cancels_gets_410_job_cancelled_and_no_retry(waiting, tenant):
    transport = CountingTransport()
    thread = in_background(tenant, cancel_via_api(tenant, steps_done=1))
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(tenant, transport).images.generate(**SMALL)
    thread.join(timeout=30)
    error = raised.value
    job = Job.objects.get(tenant=tenant.tenant)
    charged = job.hold.captured
    assert 0 < charged < job.quote  # the steps it ran
    assert (error.status_code, error.code, error.type) == (410, "job_cancelled", "invalid_request_error")
    assert error.response.headers["x-should-retry"] == "false"
    assert error.response.headers["x-credits-charged"] == str(charged)
    assert f"{charged} credits" in error.message and str(job.pk) in error.message
    assert transport.posts == 1  # the SDK did not re-submit the cancelled request
    assert Job.objects.filter(tenant=tenant.tenant).count() == 1


def test_a_job_cancelled_before_it_started_is_410_and_charges_nothing(api, waiting, tenant):
    thread = in_background(tenant, cancel_via_api(tenant))
    response = post_json(api, URL, SMALL, tenant)
    thread.join(timeout=30)
    error = assert_not_retryable(response, 410, "job_cancelled")
    assert response["x-credits-charged"] == "0" and "nothing was charged" in error["message"]


def test_an_idempotent_replay_of_a_cancelled_request_repeats_the_410_and_runs_nothing(api, waiting, tenant):
    thread = in_background(tenant, cancel_via_api(tenant))
    first = post_json(api, URL, SMALL, tenant, HTTP_IDEMPOTENCY_KEY="cancel-me")
    thread.join(timeout=30)
    assert_not_retryable(first, 410, "job_cancelled")
    again = post_json(api, URL, SMALL, tenant, HTTP_IDEMPOTENCY_KEY="cancel-me")
    assert_not_retryable(again, 410, "job_cancelled")
    assert again["Idempotent-Replayed"] == "true"
    assert Job.objects.filter(tenant=tenant.tenant).count() == 1


def test_a_vendor_shape_whose_job_is_cancelled_answers_410_in_its_envelope(api, waiting, tenant):
    thread = in_background(tenant, cancel_via_api(tenant))
    response = post_json(api, "/api/v1/image/generation", {"prompt": "x", "model": "dall-e-2"}, tenant)
    thread.join(timeout=30)
    assert response.status_code == 410 and response["x-should-retry"] == "false"
    body = response.json()
    assert body["code"] == 410 and body["error"]["code"] == "job_cancelled"


def test_the_task_of_a_cancelled_job_says_job_cancelled_like_the_waiting_request(api, waiting, tenant):
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    cancel_via_api(tenant)(Job.objects.get(pk=task["id"]))
    body = api.get(f"/v1/images/tasks/{task['id']}", **tenant.auth).json()
    assert body["status"] == "cancelled"
    assert (body["error"]["code"], body["error"]["type"]) == ("job_cancelled", "invalid_request_error")


# -- out of time: the deadline sweep and the worker's time limit ------------------------------


def test_a_job_swept_past_its_deadline_while_waiting_is_410_not_retried(api, waiting, tenant):
    from images.services.jobs import jobs_sweep

    thread = in_background(tenant, lambda job: jobs_sweep(now=timezone.now() + timedelta(days=1)))
    response = post_json(api, URL, SMALL, tenant)
    thread.join(timeout=30)
    assert_not_retryable(response, 410, "deadline_exceeded")
    assert response["x-credits-charged"] == "0"


def test_a_job_stopped_by_its_time_limit_while_waiting_is_410_not_retried(api, waiting, tenant):
    from images.services.jobs import job_fail, job_start

    def time_limit(job: Job) -> None:  # what images.worker does when the time limit stops the pipeline
        job_start(job_id=job.pk)
        job_fail(job_id=job.pk, code="time_limit_exceeded", message="The job ran past its time limit.")

    thread = in_background(tenant, time_limit)
    response = post_json(api, URL, SMALL, tenant)
    thread.join(timeout=30)
    assert_not_retryable(response, 410, "time_limit_exceeded")


# -- the event stream -----------------------------------------------------------------


def test_sdk_stream_whose_job_is_cancelled_ends_with_a_job_cancelled_error(waiting, tenant):
    transport = CountingTransport()
    thread = in_background(tenant, cancel_via_api(tenant))
    stream = sdk(tenant, transport).images.generate(
        model="gpt-image-1", prompt="x", size="1024x1024", quality="low", stream=True, partial_images=1
    )
    with pytest.raises(openai.APIError) as raised:
        for _ in stream:
            pass
    thread.join(timeout=30)
    assert raised.value.code == "job_cancelled"
    assert raised.value.body["type"] == "invalid_request_error"
    assert transport.posts == 1


# -- every terminal state, one table ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "http", "retry_header"),
    [
        ("cancelled", "cancelled", 410, "false"),
        ("failed", "deadline_exceeded", 410, "false"),
        ("failed", "time_limit_exceeded", 410, "false"),
        ("failed", "generation_failed", 502, "false"),
        ("failed", "storage_failed", 502, "false"),
        ("failed", "input_missing", 502, "false"),
        ("failed", "", 502, "false"),
        ("failed", "service_unavailable", 503, None),  # the queue was away: a retry can succeed
        ("succeeded", "images_expired", 410, "false"),
    ],
)
def test_every_ended_job_maps_to_one_error_and_only_a_transient_fault_may_be_retried(
    parked, tenant, status, code, http, retry_header
):
    from core.errors import error_headers
    from images.errors import job_error

    job = Job.objects.create(
        tenant=tenant.tenant,
        model=ImageModel.objects.get(public_id="dall-e-2"),
        prompt="x",
        width=256,
        height=256,
        steps=4,
        guidance=5.0,
        seed=1,
        quote=16,
        status=status,
        error_code=code,
        error_message="Something ended it.",
        deadline=timezone.now(),
    )
    error = job_error(job=job)
    assert error.status_code == http
    assert error_headers(error).get("x-should-retry") == retry_header
    if retry_header is None:
        assert error.status_code >= 500  # (a retryable answer is only ever a transient fault)
    elif error.status_code < 500:
        assert error.status_code not in RETRYABLE
