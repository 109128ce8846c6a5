"""Cheap task polls (#20 item 4): a queued or running task is answered from its status
snapshot (images.task_status) without reading the job from the database, with
Retry-After; `?wait=N` long-polls; a final task is read from the database; a cancel
charges the steps the snapshot records."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import CreditAccount
from images.models import Job
from images.serializers import task_body
from images.services.jobs import job_progress, job_start
from images.task_status import task_status_progress
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}


def _db_body(task_id: str) -> dict:
    job = Job.objects.select_related("model", "hold").get(pk=task_id)
    return task_body(job=job, base_url="http://testserver/")


def _job_queries(queries) -> list[str]:
    return [q["sql"] for q in queries if '"images_job"' in q["sql"] or '"billing_hold"' in q["sql"]]


# Jobs are enqueued (and their snapshot written) after their transaction commits.
pytestmark = pytest.mark.usefixtures("transactional_db")


def test_queued_and_running_tasks_are_served_from_the_snapshot_as_the_row_would_be(
    api, parked, tenant, transactional_db
):
    task = post_json(api, URL, {**SMALL, "n": 2}, tenant, HTTP_PREFER="respond-async").json()
    path = f"/v1/images/tasks/{task['id']}"
    with CaptureQueriesContext(connection) as queries:
        queued = api.get(path, **tenant.auth)
    assert queued.status_code == 200 and queued["Retry-After"] == "1"
    assert queued.json() == _db_body(task["id"]) and queued.json()["status"] == "queued"
    assert _job_queries(queries.captured_queries) == []  # the key's row only

    done = job_start(job_id=task["id"]).steps - 1  # a worker claims it
    job_progress(job_id=task["id"], steps_done=done)  # the row as it used to be kept up to date
    task_status_progress(job_id=task["id"], steps_done=done)
    with CaptureQueriesContext(connection) as queries:
        running = api.get(path, **tenant.auth)
    body = running.json()
    assert running["Retry-After"] == "1" and body == _db_body(task["id"])
    assert body["status"] == "running" and body["started_at"] is not None
    assert body["progress"]["steps_done"] == done and len(body["seeds"]) == 2
    assert _job_queries(queries.captured_queries) == []


def test_another_tenants_task_is_404_even_from_the_snapshot(api, parked, make_tenant, transactional_db):
    a, b = make_tenant(), make_tenant()
    task = post_json(api, URL, SMALL, a, HTTP_PREFER="respond-async").json()
    assert api.get(f"/v1/images/tasks/{task['id']}", **a.auth).status_code == 200
    response = api.get(f"/v1/images/tasks/{task['id']}?wait=1", **b.auth)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_a_final_task_is_read_from_the_database_without_retry_after(api, parked, tenant, transactional_db):
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    assert api.delete(f"/v1/images/tasks/{task['id']}", **tenant.auth).status_code == 200
    response = api.get(f"/v1/images/tasks/{task['id']}?wait=30", **tenant.auth)  # final: no waiting
    assert response.status_code == 200 and "Retry-After" not in response
    assert response.json() == _db_body(task["id"]) and response.json()["status"] == "cancelled"


def test_a_cancel_charges_the_steps_the_snapshot_records(api, parked, tenant, transactional_db):
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()  # 16 credits
    job = job_start(job_id=task["id"])
    done = job.steps // 2
    task_status_progress(job_id=task["id"], steps_done=done)  # the worker's progress: no database write
    assert Job.objects.get(pk=task["id"]).steps_done == 0 and done > 0
    cancelled = api.delete(f"/v1/images/tasks/{task['id']}", **tenant.auth).json()
    expected = -(-16 * done // job.steps)
    assert cancelled["credits_charged"] == expected and cancelled["progress"]["steps_done"] == done
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (10_000 - expected, 0)
    task_status_progress(job_id=task["id"], steps_done=job.steps)  # a late write changes nothing any more
    assert api.get(f"/v1/images/tasks/{task['id']}", **tenant.auth).json()["progress"]["steps_done"] == done


@pytest.mark.parametrize("wait", ["abc", "-1", "61", "1.5", "", "99999999999999999999"])
def test_a_bad_wait_is_400_naming_wait(api, parked, tenant, wait):
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    response = api.get(f"/v1/images/tasks/{task['id']}?wait={wait}", **tenant.auth)
    assert response.status_code == 400 and response.json()["error"]["param"] == "wait"


def test_a_long_poll_answers_when_the_task_changes(api, parked, tenant, transactional_db):
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    answers: list = []
    poller = threading.Thread(
        target=lambda: answers.append(api.get(f"/v1/images/tasks/{task['id']}?wait=60", **tenant.auth))
    )
    poller.start()
    job_start(job_id=task["id"])  # queued -> running, before or while the poll waits
    step = 0
    while poller.is_alive() and step < 200:  # if it read `running` first, the next step wakes it
        step += 1
        task_status_progress(job_id=task["id"], steps_done=step)
        poller.join(timeout=0.05)
    poller.join(timeout=30)
    assert answers and answers[0].status_code == 200 and answers[0]["Retry-After"] == "1"
    assert answers[0].json()["status"] == "running" and step < 200
