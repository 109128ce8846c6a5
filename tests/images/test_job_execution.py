"""Job execution: the time limit and a client's cancel stop the pipeline at the next
step, a cancel is charged for the work done, and only transient errors are retried."""

from __future__ import annotations

import math
import time

import pytest
from django.db import OperationalError

from billing.models import CreditAccount, LedgerEntry, UsageRecord
from images.backends.base import PipelineError
from images.models import ImageModel, Job
from images.selectors import image_model_cache_clear
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}
STEPS = 40  # long enough that stopping early is unmistakable
STEP_DELAY = 0.05  # seconds added to every step


class SlowBackend:
    """The real backend, each step at least STEP_DELAY longer; keeps every result."""

    def __init__(self, real) -> None:
        self.real = real
        self.results: list = []

    def run(self, task, **options):
        inner = task.on_step

        def slow(done: int, total: int) -> None:
            time.sleep(STEP_DELAY)
            inner(done, total)

        task.on_step = slow
        result = self.real.run(task, **options)
        self.results.append(result)
        return result

    def __getattr__(self, name):
        return getattr(self.real, name)

    def wait_result(self, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while not self.results and time.monotonic() < deadline:
            time.sleep(0.02)
        (result,) = self.results
        return result


@pytest.fixture
def slow(worker, monkeypatch) -> SlowBackend:
    from images import worker as worker_module
    from images.backends import get_backend

    ImageModel.objects.filter(public_id="dall-e-2").update(steps_by_quality={"standard": STEPS, "default": STEPS})
    image_model_cache_clear()  # (a bulk update sends no signal)
    backend = SlowBackend(get_backend())
    model = ImageModel.objects.get(public_id="dall-e-2")
    backend.count_tokens(worker_module.pipeline_source(model), "load the model now, not on the job's time")
    monkeypatch.setattr(worker_module, "get_backend", lambda: backend)
    return backend


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def balance(tenant) -> tuple[int, int]:
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    return account.balance, account.held


# ---------------------------------------------------------------------------
# Time limit
# ---------------------------------------------------------------------------


def test_time_limit_stops_the_pipeline_fails_the_job_and_releases_the_hold(api, tenant, slow, settings):
    settings.JOB_TIME_LIMIT_MS = 600  # the pipeline gets 90% of it
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    result = slow.wait_result()
    wait_for(lambda: Job.objects.get(pk=task["id"]).status in Job.TERMINAL)
    job = Job.objects.get(pk=task["id"])
    assert job.steps == STEPS and result.stopped == "time_limit"
    assert 1 <= result.steps_done < STEPS and result.images == []  # stopped in the middle of its call
    assert (job.status, job.error_code, job.attempts) == ("failed", "time_limit_exceeded", 1)  # not retried
    assert balance(tenant) == (10_000, 0) and job.hold.status == "released"
    assert UsageRecord.objects.get(job=job).outcome == "failed"
    assert not job.images.exists()


# ---------------------------------------------------------------------------
# Cancelling
# ---------------------------------------------------------------------------


def test_cancelling_a_running_job_charges_the_steps_done_and_stops_its_pipeline(api, tenant, slow):
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    path = f"/v1/images/tasks/{task['id']}"
    # (progress is reported in the task's status snapshot, not the row: #20)
    wait_for(lambda: api.get(path, **tenant.auth).json()["progress"]["steps_done"] >= 1)
    response = api.delete(path, **tenant.auth)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"

    result = slow.wait_result()
    assert result.stopped == "settled" and result.steps_done < STEPS  # stopped at a step, not run out
    time.sleep(0.3)  # (anything the worker would still do after its pipeline returned)
    job = Job.objects.get(pk=task["id"])
    record = UsageRecord.objects.get(job=job)
    charged = record.credits_charged
    assert job.status == "cancelled" and record.outcome == "cancelled" and not job.images.exists()
    assert 0 < charged < job.quote
    assert charged == math.ceil(job.quote * job.steps_done / job.steps)
    assert response.json()["credits_charged"] == charged  # the DELETE answer says the amount
    assert balance(tenant) == (10_000 - charged, 0)
    assert job.hold.status == "captured" and job.hold.captured == charged
    assert LedgerEntry.objects.filter(job=job, kind="capture").count() == 1


def test_cancelling_a_queued_job_charges_nothing(api, parked, tenant):
    from images.services.jobs import job_cancel

    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    job = Job.objects.get(pk=task["id"])
    assert job_cancel(job=job) == 0
    assert balance(tenant) == (10_000, 0) and Job.objects.get(pk=job.pk).hold.status == "released"
    record = UsageRecord.objects.get(job=job)
    assert (record.outcome, record.credits_charged) == ("cancelled", 0)
    assert job_cancel(job=job) == 0  # already cancelled: nothing more happens


def test_cancel_charges_steps_rounded_up_once_and_delivered_previews_count(api, parked, tenant, transactional_db):
    from PIL import Image

    from images import notify
    from images.services.jobs import job_cancel, job_progress, job_start
    from images.worker import _publish_preview

    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    job = job_start(job_id=task["id"])
    assert (job.steps, job.quote) == (4, 16)
    assert job_progress(job_id=job.pk, steps_done=1)
    _publish_preview(job, 0, Image.new("RGB", (32, 32)), steps_done=2)  # a preview after step 2 was sent...
    assert notify.job_event_next(job.pk, 1.0)["type"] == "partial"
    assert job_progress(job_id=job.pk, steps_done=1)  # ...and a late progress write does not lower the count
    assert job_cancel(job=job) == 8  # ceil(16 * 2 / 4)
    assert job_cancel(job=job) == 0
    assert balance(tenant) == (10_000 - 8, 0)
    assert LedgerEntry.objects.filter(job=job, kind="capture").count() == 1
    assert UsageRecord.objects.get(job=job).credits_charged == 8
    assert not job_progress(job_id=job.pk, steps_done=3)  # no longer running: nothing recorded
    _publish_preview(job, 1, Image.new("RGB", (32, 32)), steps_done=3)
    assert notify.job_event_next(job.pk, 0.2) == {"type": "done"}  # no preview after the cancel
    assert Job.objects.get(pk=job.pk).steps_done == 2


def test_one_step_of_many_is_charged_at_least_one_credit(api, parked, tenant):
    from images.services.jobs import job_cancel, job_progress, job_start

    ImageModel.objects.filter(public_id="dall-e-2").update(steps_by_quality={"standard": 40, "default": 40})
    image_model_cache_clear()  # (a bulk update sends no signal)
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    job = job_start(job_id=task["id"])
    job_progress(job_id=job.pk, steps_done=1)
    assert job_cancel(job=job) == 1  # ceil(16 * 1 / 40)


# ---------------------------------------------------------------------------
# Which errors are retried
# ---------------------------------------------------------------------------


def test_only_transient_errors_are_retried(settings):
    from django.db import InterfaceError

    from images.actors import generation_should_retry

    settings.JOB_MAX_RETRIES = 3
    assert generation_should_retry(0, OperationalError("server closed the connection"))
    assert generation_should_retry(2, InterfaceError("connection already closed"))
    assert not generation_should_retry(3, OperationalError("still down"))  # retries used up
    assert not generation_should_retry(0, PipelineError("generation failed"))
    assert not generation_should_retry(0, RuntimeError("a bug"))


def test_a_lost_database_while_settling_is_retried_and_charged_once(api, worker, tenant, monkeypatch):
    from images import worker as worker_module

    real, calls = worker_module.job_complete, []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(worker_module, "job_complete", flaky)
    response = post_json(api, URL, SMALL, tenant)
    assert response.status_code == 200, response.content
    job = Job.objects.get(tenant=tenant.tenant)
    assert (job.status, job.attempts, len(calls)) == ("succeeded", 2, 2)
    assert balance(tenant) == (10_000 - 16, 0)
    assert LedgerEntry.objects.filter(job=job, kind="capture").count() == 1


def test_a_bug_outside_the_pipeline_is_not_retried_and_releases_the_hold(api, worker, tenant, monkeypatch):
    from images import worker as worker_module

    calls = []

    def broken(**kwargs):
        calls.append(1)
        raise RuntimeError("a bug")

    monkeypatch.setattr(worker_module, "job_complete", broken)
    response = post_json(api, URL, SMALL, tenant)
    assert response.status_code == 502
    job = Job.objects.get(tenant=tenant.tenant)
    assert (job.status, job.error_code, job.attempts, len(calls)) == ("failed", "generation_failed", 1, 1)
    assert balance(tenant) == (10_000, 0) and job.hold.status == "released"


def test_images_that_cannot_be_stored_fail_their_job_and_release_the_hold(api, worker, tenant, settings, tmp_path):
    """One image (stored on the job's own thread) or several (on the encoder threads):
    a store that refuses the file fails the job with storage_failed, charges nothing
    and leaves no file behind."""
    media = tmp_path / "media"
    media.mkdir()
    (media / "images").write_text("a file where the store wants its images folder")
    settings.MEDIA_ROOT = str(media)
    for n in (1, 2):
        response = post_json(api, URL, {**SMALL, "n": n}, tenant)
        assert response.status_code == 502, response.content
        assert response.json()["error"]["code"] == "storage_failed"
    jobs = Job.objects.filter(tenant=tenant.tenant)
    assert sorted((job.n, job.status, job.error_code) for job in jobs) == [
        (1, "failed", "storage_failed"),
        (2, "failed", "storage_failed"),
    ]
    assert all(job.hold.status == "released" and not job.images.exists() for job in jobs)
    assert balance(tenant) == (10_000, 0)
    assert [path.name for path in media.iterdir()] == ["images"]
