"""A short poll of a queued or running task answered before Django (images/task_poll.py,
issue 20): the same poll through the real ASGI application (PooledASGIHandler) with
TASK_POLL_FAST on and off gets the same status, body and headers (x-request-id's value
and the rate limit's remaining count aside, which must be one lower: counted once); every
case that is not plainly a live task of the key's tenant gets Django's own answer."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from accounts.models import APIKey, Tenant
from images.services.jobs import job_start
from images.task_status import task_status_progress
from tests.conftest import post_json
from tests.images.test_waiting_asgi import Client, app  # noqa: F401 (the fixture)

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}
REMAINING = "x-ratelimit-remaining-requests"
# Seconds-until-reset values: equal unless a second ticks between two requests.
CLOCK = ("retry-after", "x-ratelimit-reset-requests")
RATE_LIMITED = {"status": "429", "code": "rate_limit_exceeded"}

pytestmark = pytest.mark.usefixtures("transactional_db")


class PollClient(Client):
    """A GET through the ASGI application, its headers kept as a list (a header sent
    twice shows twice)."""

    def __init__(self, path: str, tenant, headers: dict | None = None) -> None:
        super().__init__("GET", path, tenant, headers={"host": "testserver", **(headers or {})})
        self.scope["headers"] = [h for h in self.scope["headers"] if h[0] != b"content-type"]  # (a GET)

    @property
    def headers_list(self) -> list[tuple[str, str]]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return [(k.decode().lower(), v.decode("latin-1")) for k, v in start["headers"]]


def fast_count(status: str = "200") -> float:
    return REGISTRY.get_sample_value("imagegen_task_polls_fast_total", {"status": status}) or 0.0


def poll(app, settings, tenant, path: str, *, fast: bool, headers: dict | None = None) -> PollClient:  # noqa: F811
    settings.TASK_POLL_FAST = fast
    client = PollClient(path, tenant, headers)
    asyncio.run(client.run(app))
    return client


def comparable(client: PollClient) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, every header (lower-case name; x-request-id's value, the remaining count
    and the seconds to the window's reset blanked), body."""
    headers = []
    for name, value in client.headers_list:
        if name == "x-request-id":
            assert re.fullmatch(r"req_[0-9a-f]{32}", value), value
            value = "*"
        elif name in (REMAINING, *CLOCK):
            value = "*"
        headers.append((name, value))
    body = re.sub(rb"Retry in \d+ s", b"Retry in N s", client.content)
    return client.status, sorted(headers), body


def same_answer(django: PollClient, fast: PollClient) -> None:
    (status, headers, body), (django_status, django_headers, django_body) = comparable(fast), comparable(django)
    assert status == django_status
    assert sorted(set(headers) - set(django_headers)) == [] and sorted(set(django_headers) - set(headers)) == []
    assert headers == django_headers  # (and as many of each)
    assert body == django_body
    for name in CLOCK:
        if name in django.headers:
            assert abs(int(fast.headers[name].rstrip("s")) - int(django.headers[name].rstrip("s"))) <= 1


def submit(api, tenant) -> str:
    response = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    return response.json()["id"]


@pytest.fixture
def tenant_rpm(tenant):
    """The tenant's rate limit is on (a remaining count to compare)."""
    Tenant.objects.filter(pk=tenant.tenant.pk).update(rpm_limit=1000)
    return tenant


def _compare_on_and_off(app, settings, tenant, path: str) -> tuple[PollClient, PollClient]:  # noqa: F811
    """Django, then the fast path, then Django: the same answers, and the fast poll
    counted exactly once (the remaining count drops by one each time)."""
    before = fast_count()
    first = poll(app, settings, tenant, path, fast=False)
    fast = poll(app, settings, tenant, path, fast=True)
    second = poll(app, settings, tenant, path, fast=False)
    assert fast_count() == before + 1  # the fast path answered it
    assert first.status == 200, first.content
    same_answer(first, fast)
    remaining = [int(c.headers[REMAINING]) for c in (first, fast, second)]
    assert remaining == [remaining[0], remaining[0] - 1, remaining[0] - 2]
    assert fast.headers["retry-after"] == "1" and fast.headers["allow"] and fast.headers["x-frame-options"]
    return first, fast


def test_a_queued_task_is_answered_as_django_answers_it(app, api, parked, tenant_rpm, settings):  # noqa: F811
    task_id = submit(api, tenant_rpm)
    _, fast = _compare_on_and_off(app, settings, tenant_rpm, f"/v1/images/tasks/{task_id}")
    assert fast.json()["status"] == "queued" and fast.json()["id"] == task_id
    _, fast = _compare_on_and_off(app, settings, tenant_rpm, f"/v1/images/tasks/{task_id}?wait=0")
    assert fast.json()["status"] == "queued"


def test_a_running_task_with_steps_done_is_answered_as_django_answers_it(
    app,  # noqa: F811
    api,
    parked,
    tenant_rpm,
    settings,
):
    task_id = submit(api, tenant_rpm)
    done = job_start(job_id=task_id).steps - 1
    task_status_progress(job_id=task_id, steps_done=done)
    _, fast = _compare_on_and_off(app, settings, tenant_rpm, f"/v1/images/tasks/{task_id}")
    body = fast.json()
    assert body["status"] == "running" and body["progress"]["steps_done"] == done and body["started_at"]


def test_a_queued_task_behind_another_shows_its_queue_position(app, api, parked, tenant_rpm, settings):  # noqa: F811
    from images.queue_position import queue_order_clear

    queue_order_clear(queue="parked")  # (the queued jobs of earlier tests went with their database)
    submit(api, tenant_rpm)
    second = submit(api, tenant_rpm)
    _, fast = _compare_on_and_off(app, settings, tenant_rpm, f"/v1/images/tasks/{second}")
    assert fast.json()["queue_position"] == 2


def _falls_through(app, settings, tenant, path: str, headers: dict | None = None) -> PollClient:  # noqa: F811
    """The poll with the fast path on is Django's answer: not counted as a fast one, and
    the same as with it off."""
    before = fast_count(), fast_count("429")
    on = poll(app, settings, tenant, path, fast=True, headers=headers)
    assert (fast_count(), fast_count("429")) == before, "the fast path answered"
    off = poll(app, settings, tenant, path, fast=False, headers=headers)
    same_answer(off, on)
    return on


def test_a_bad_or_missing_key_gets_djangos_401(app, api, parked, tenant, settings):  # noqa: F811
    path = f"/v1/images/tasks/{submit(api, tenant)}"
    prefix = tenant.raw.partition(".")[0]
    for authorization in (f"Bearer {prefix}.wrongsecret", "Bearer nosuchkey.secret", "Basic abc", "Bearer "):
        answer = _falls_through(app, settings, tenant, path, {"authorization": authorization})
        assert answer.status == 401 and answer.json()["error"]["code"] == "invalid_api_key", authorization
        assert answer.headers["www-authenticate"] == 'Bearer realm="api"'
    key = APIKey.objects.get(pk=tenant.key.pk)
    key.revoked = True
    key.save()
    poll(app, settings, tenant, path, fast=False)  # the revoked row is cached (authentication reads it)
    answer = _falls_through(app, settings, tenant, path)
    assert answer.status == 401 and answer.json()["error"]["code"] == "invalid_api_key"


def test_a_poll_without_a_key_gets_djangos_401(app, api, parked, tenant, settings):  # noqa: F811
    path = f"/v1/images/tasks/{submit(api, tenant)}"

    def without_key(fast: bool) -> PollClient:
        settings.TASK_POLL_FAST = fast
        client = PollClient(path, tenant)
        client.scope["headers"] = [h for h in client.scope["headers"] if h[0] != b"authorization"]
        asyncio.run(client.run(app))
        return client

    before = fast_count()
    on, off = without_key(True), without_key(False)
    assert fast_count() == before and on.status == 401
    same_answer(off, on)


def test_another_tenants_task_is_djangos_404(app, api, parked, make_tenant, settings):  # noqa: F811
    owner, other = make_tenant(), make_tenant()
    path = f"/v1/images/tasks/{submit(api, owner)}"
    poll(app, settings, other, "/v1/images/tasks/warm-up", fast=False)  # other's key cached, last_used fresh
    answer = _falls_through(app, settings, other, path)
    assert answer.status == 404 and answer.json()["error"]["code"] == "not_found"


def test_a_final_task_is_read_from_its_row_by_django(app, api, parked, tenant, settings):  # noqa: F811
    from images.services import jobs as job_services

    task_id = submit(api, tenant)
    job_services.job_cancel(job=job_services.Job.objects.get(pk=task_id))
    answer = _falls_through(app, settings, tenant, f"/v1/images/tasks/{task_id}")
    assert answer.status == 200 and answer.json()["status"] == "cancelled" and "retry-after" not in answer.headers


def test_a_suspended_tenant_gets_djangos_403(app, api, parked, tenant, settings):  # noqa: F811
    path = f"/v1/images/tasks/{submit(api, tenant)}"
    tenant.tenant.status = Tenant.Status.SUSPENDED
    tenant.tenant.save()
    poll(app, settings, tenant, path, fast=False)  # the key row cached again, with its suspended tenant
    answer = _falls_through(app, settings, tenant, path)
    assert answer.status == 403 and answer.json()["error"]["code"] == "tenant_suspended"


def test_a_stale_last_used_at_is_written_by_django(app, api, parked, tenant, settings):  # noqa: F811
    path = f"/v1/images/tasks/{submit(api, tenant)}"
    poll(app, settings, tenant, path, fast=False)
    long_ago = timezone.now() - timezone.timedelta(minutes=5)
    key = APIKey.objects.select_related("tenant").get(pk=tenant.key.pk)
    key.last_used_at = long_ago
    from accounts.key_cache import api_key_cache_put

    api_key_cache_put(key=key)  # the cached row says it was last used 5 minutes ago
    before = fast_count()
    answer = poll(app, settings, tenant, path, fast=True)
    assert answer.status == 200 and fast_count() == before
    assert APIKey.objects.get(pk=tenant.key.pk).last_used_at > long_ago + timezone.timedelta(minutes=4)
    poll(app, settings, tenant, path, fast=True)
    assert fast_count() == before + 1  # fresh again: the next poll is a fast one


def test_a_due_key_row_sends_one_poll_to_django_the_rest_answer_from_it(app, api, parked, tenant, settings):  # noqa: F811
    from accounts.key_cache import api_key_cache_put, api_key_cache_refresh_due, api_key_cached

    settings.API_KEY_CACHE_SECONDS = 10
    path = f"/v1/images/tasks/{submit(api, tenant)}"
    poll(app, settings, tenant, path, fast=False)
    key = api_key_cached(prefix=tenant.key.prefix)
    api_key_cache_put(key=key, cached_at=time.time() - 6)  # past half of its 10 s
    before = fast_count()
    answer = poll(app, settings, tenant, path, fast=True)  # claims the refresh: Django reads the row
    assert answer.status == 200 and fast_count() == before
    assert not api_key_cache_refresh_due(api_key_cached(prefix=tenant.key.prefix))  # cached anew
    api_key_cache_put(key=key, cached_at=time.time() - 6)  # due again, but the claim is held (5 s)
    answer = poll(app, settings, tenant, path, fast=True)
    assert answer.status == 200 and fast_count() == before + 1  # answered from the cached row


@pytest.mark.parametrize(
    "query, headers",
    [
        ("?wait=1", {}),
        ("?other=1", {}),
        ("", {"accept": "application/json; indent=2"}),
        ("", {"cookie": "sessionid=x"}),
        ("", {"host": "evil.example"}),
    ],
)
def test_anything_but_a_plain_short_poll_is_djangos(app, api, parked, tenant, settings, query, headers):  # noqa: F811
    task_id = submit(api, tenant)
    poll(app, settings, tenant, f"/v1/images/tasks/{task_id}", fast=False)  # key cached, last_used fresh
    if query == "?wait=1":  # a long poll: changed within its second by a step done
        before = fast_count()
        answer = poll(app, settings, tenant, f"/v1/images/tasks/{task_id}{query}", fast=True)
        assert answer.status == 200 and fast_count() == before
        return
    answer = _falls_through(app, settings, tenant, f"/v1/images/tasks/{task_id}{query}", headers)
    assert answer.status == (400 if "host" in headers else 200)


def test_a_rate_limited_poll_gets_djangos_429_and_is_counted_once(
    app,  # noqa: F811
    api,
    parked,
    tenant,
    settings,
    caplog,
):
    if time.time() % 60 > 55:  # (the windows are whole minutes: start in a fresh one)
        time.sleep(61 - time.time() % 60)
    Tenant.objects.filter(pk=tenant.tenant.pk).update(rpm_limit=3)
    path = f"/v1/images/tasks/{submit(api, tenant)}"  # 1 (caches the key with the limit)
    first = poll(app, settings, tenant, path, fast=False)  # 2
    assert first.headers[REMAINING] == "1"
    fast = poll(app, settings, tenant, path, fast=True)  # 3: the last one allowed
    assert fast.status == 200 and fast.headers[REMAINING] == "0"
    refused_before = fast_count("429")
    errors_before = REGISTRY.get_sample_value("imagegen_api_errors_total", RATE_LIMITED)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        fast = poll(app, settings, tenant, path, fast=True)  # 4: refused
        fast_lines = [r for r in caplog.records if r.name == "django.request"]
        caplog.clear()
        django = poll(app, settings, tenant, path, fast=False)  # 5: refused
        django_lines = [r for r in caplog.records if r.name == "django.request"]
    assert fast_count("429") == refused_before + 1
    errors = REGISTRY.get_sample_value("imagegen_api_errors_total", RATE_LIMITED)
    assert errors == (errors_before or 0) + 2  # one each: the fast refusal is counted as Django counts its own
    assert django.status == 429 and django.json()["error"]["code"] == "rate_limit_exceeded"
    same_answer(django, fast)
    assert fast.headers["retry-after"] and fast.headers["x-ratelimit-limit-requests"] == "3"
    assert [r.getMessage() for r in fast_lines] == [r.getMessage() for r in django_lines] != []


def test_a_middleware_chain_it_does_not_mirror_leaves_every_poll_to_django(app, api, parked, tenant, settings):  # noqa: F811
    path = f"/v1/images/tasks/{submit(api, tenant)}"
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    before = fast_count()
    answer = poll(app, settings, tenant, path, fast=True)
    assert answer.status == 200 and fast_count() == before
