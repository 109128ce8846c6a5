"""Webhooks, deadlines and queue positions (issue 24).

A real HTTP receiver on 127.0.0.1 (a thread) answers 500 to the first delivery of each
`webhook-id` and 2xx after, so every delivery is retried once with the same id; the
signatures are checked with the `standardwebhooks` library itself. Jobs run on the
session's real Dramatiq worker (StubBroker embedded, Redis with BROKER_URL)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from accounts.services import api_key_create
from billing.models import CreditAccount
from core.http_fetch import FetchTargetRefused, http_post
from images.fields import cancel_after_parse
from images.models import ImageModel, Job, WebhookDelivery, WebhookEndpoint
from images.services import webhooks as services
from images.services.jobs import job_deadline_reached, job_start, jobs_sweep
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "a red square", "size": "256x256", "response_format": "b64_json"}
ASYNC = {"HTTP_PREFER": "respond-async"}

pytestmark = pytest.mark.usefixtures("transactional_db")


class Receiver:
    """A loopback webhook receiver: records every request; answers 500 to the first
    delivery of each webhook-id (or to everything when `always_fail`)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.always_fail = False
        self._seen: set[str] = set()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                msg_id = self.headers.get("webhook-id", "")
                with receiver._cond:
                    first = msg_id not in receiver._seen
                    receiver._seen.add(msg_id)
                    fail = receiver.always_fail or first
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers.items()),
                            "body": body,
                            "status": 500 if fail else 204,
                        }
                    )
                    receiver._cond.notify_all()
                self.send_response(500 if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.requests):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"receiver got {len(self.requests)} request(s): {self.requests}"
                self._cond.wait(remaining)
            return list(self.requests)


@pytest.fixture
def receiver(settings):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True  # (the receiver is on loopback)
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.2
    settings.PUBLIC_BASE_URL = "http://testserver"
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def admin(tenant):
    key, raw = api_key_create(tenant=tenant.tenant, name="admin", created_by="test", is_admin=True)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _endpoint(api, admin, url: str, **extra) -> dict:
    response = api.post("/v1/webhooks", {"url": url, **extra}, format="json", **admin)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["secret"].startswith("whsec_")
    return body


def _until(predicate, timeout: float = 30.0) -> None:
    """Wait for the worker's side of a delivery (it records the answer after it got it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _of_type(event_type: str, count: int = 2):
    return lambda requests: len([r for r in requests if json.loads(r["body"])["type"] == event_type]) >= count


def test_a_finished_async_job_is_delivered_signed_and_retried_with_the_same_webhook_id(
    api, worker, tenant, admin, receiver
):
    endpoint = _endpoint(api, admin, receiver.url + "/hooks", events=["image.generation.completed"])
    task = post_json(api, URL, SMALL, tenant, **ASYNC).json()

    requests = receiver.wait_for(lambda rs: len(rs) >= 2 and rs[-1]["status"] == 204)
    first, second = requests[0], requests[1]
    assert first["status"] == 500 and second["status"] == 204
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]  # the same message, retried
    assert first["body"] == second["body"]
    assert first["path"] == "/hooks"
    event = Webhook(endpoint["secret"]).verify(second["body"], second["headers"])  # the library's own check
    assert event["type"] == "image.generation.completed"
    assert event["object"] == "event" and event["id"].startswith("evt_")
    assert event["data"]["id"] == task["id"] and event["data"]["status"] == "succeeded"
    assert len(event["data"]["result"]["data"]) == 1
    with pytest.raises(WebhookVerificationError):  # a wrong secret does not verify
        Webhook(services.secret_new()).verify(second["body"], second["headers"])

    _until(lambda: WebhookDelivery.objects.get(endpoint_id=endpoint["id"]).status == "delivered")
    delivery = WebhookDelivery.objects.get(endpoint_id=endpoint["id"])
    assert delivery.status == "delivered" and delivery.attempts == 2
    assert delivery.event_id == first["headers"]["webhook-id"]
    log = api.get(f"/v1/webhooks/{endpoint['id']}/deliveries", **admin).json()["data"]
    assert [(d["status"], d["attempts"], d["last_status_code"]) for d in log] == [("delivered", 2, 204)]


def test_a_per_request_webhook_url_gets_its_jobs_event(api, worker, tenant, admin, receiver):
    secret = api.post("/v1/webhooks/request_secret", **admin).json()["secret"]
    task = post_json(api, URL, {**SMALL, "webhook_url": receiver.url + "/job"}, tenant, **ASYNC).json()

    requests = receiver.wait_for(lambda rs: any(r["status"] == 204 for r in rs))
    delivered = [r for r in requests if r["status"] == 204][0]
    assert delivered["path"] == "/job"
    event = Webhook(secret).verify(delivered["body"], delivered["headers"])
    assert event["type"] == "image.generation.completed" and event["data"]["id"] == task["id"]
    assert Job.objects.get(pk=task["id"]).webhook_url == receiver.url + "/job"


def test_a_cancelled_job_sends_image_generation_cancelled(api, worker, parked, tenant, admin, receiver):
    endpoint = _endpoint(api, admin, receiver.url)
    task = post_json(api, URL, SMALL, tenant, **ASYNC).json()
    assert api.delete(f"/v1/images/tasks/{task['id']}", **tenant.auth).json()["status"] == "cancelled"

    requests = receiver.wait_for(_of_type("image.generation.cancelled"))
    event = Webhook(endpoint["secret"]).verify(requests[-1]["body"], requests[-1]["headers"])
    assert event["type"] == "image.generation.cancelled"
    assert event["data"]["id"] == task["id"] and event["data"]["error"]["code"] == "job_cancelled"
    assert event["data"]["credits_charged"] == 0


def test_cancel_after_stops_a_job_releases_its_hold_and_fires_its_webhook(api, worker, parked, tenant, admin, receiver):
    endpoint = _endpoint(api, admin, receiver.url, events=["image.generation.cancelled"])
    response = post_json(api, URL, SMALL, tenant, HTTP_CANCEL_AFTER="2s", **ASYNC)
    assert response.status_code == 202
    job = Job.objects.get(pk=response.json()["id"])
    assert timedelta(seconds=1) < job.deadline - job.created_at <= timedelta(seconds=3)
    assert CreditAccount.objects.get(tenant=tenant.tenant).held > 0

    time.sleep(2.2)
    assert jobs_sweep() == 1  # (each worker runs this every JOB_SWEEP_SECONDS)

    # The cancel rules: it never started, so it is free.
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert account.held == 0 and account.balance == 10_000
    task = api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()
    assert task["status"] == "cancelled" and task["error"]["code"] == "cancel_after_exceeded"
    assert "Cancel-After" in task["error"]["message"]
    requests = receiver.wait_for(_of_type("image.generation.cancelled"))
    event = Webhook(endpoint["secret"]).verify(requests[-1]["body"], requests[-1]["headers"])
    assert event["data"]["error"]["code"] == "cancel_after_exceeded"
    assert event["data"]["credits_charged"] == 0


def test_cancel_after_charges_the_steps_a_started_job_ran(registry, tenant):
    """A running job stopped by its Cancel-After pays for the steps it ran, as a DELETE
    would (job_cancel's rule), unlike the operator's deadline, which releases all."""
    from billing.services import credits_hold

    model = ImageModel.objects.get(public_id="dall-e-2")
    with transaction.atomic():
        job = Job.objects.create(
            tenant=tenant.tenant,
            model=model,
            kind="generate",
            prompt="p",
            n=1,
            width=256,
            height=256,
            steps=4,
            guidance=1.0,
            seed=1,
            quote=40,
            params={"cancel_after": 2.0},
            status=Job.Status.RUNNING,
            steps_done=1,
            deadline=timezone.now() - timedelta(seconds=1),
        )
        credits_hold(tenant=tenant.tenant, api_key=None, job=job, amount=40)
    assert job_deadline_reached(job_id=job.pk) is True
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.error_code == "cancel_after_exceeded"
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert account.held == 0 and account.balance == 10_000 - 10  # ceil(40 * 1 / 4)
    assert job_deadline_reached(job_id=job.pk) is False  # settled once


@pytest.mark.parametrize("raw", ["", "5", "2x", "1s1m", "-3s", "0s", "8d", "1.5s", "30 s", "９s"])
def test_a_malformed_cancel_after_is_400_naming_the_header_and_holds_nothing(api, registry, tenant, raw):
    response = post_json(api, URL, SMALL, tenant, HTTP_CANCEL_AFTER=raw, **ASYNC)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "Cancel-After"
    assert not Job.objects.exists()
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_cancel_after_durations_parse_as_replicate_writes_them():
    assert cancel_after_parse(None) is None
    assert [cancel_after_parse(v) for v in ("30s", "5m", "1h", "1m30s", "1h2m3s", "1500ms")] == [
        30,
        300,
        3600,
        90,
        3723,
        1.5,
    ]


def test_queued_tasks_show_their_queue_position_until_they_run(api, parked, tenant):
    from images.queue_position import queue_order_clear

    queue_order_clear(queue="parked")  # (queued jobs of earlier tests went with their database)
    tasks = [post_json(api, URL, SMALL, tenant, **ASYNC).json() for _ in range(3)]
    assert [t["queue_position"] for t in tasks] == [1, 2, 3]  # the 202 answers
    polled = [api.get(f"/v1/images/tasks/{t['id']}", **tenant.auth).json() for t in tasks]
    assert [t["queue_position"] for t in polled] == [1, 2, 3]  # polls (from the snapshot)

    api.delete(f"/v1/images/tasks/{tasks[0]['id']}", **tenant.auth)  # leaves the queue
    job_start(job_id=tasks[1]["id"])  # a worker claims the next one
    after = [api.get(f"/v1/images/tasks/{t['id']}", **tenant.auth).json() for t in tasks]
    assert [(t["status"], t["queue_position"]) for t in after] == [
        ("cancelled", None),
        ("running", None),
        ("queued", 1),
    ]


def test_get_webhooks_lists_the_endpoint_to_admin_keys_only(api, registry, tenant, admin, make_tenant, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    endpoint = _endpoint(api, admin, "https://hooks.example.com/in", description="prod")
    listed = api.get("/v1/webhooks", **admin).json()
    assert listed["object"] == "list"
    assert [(e["id"], e["url"], e["events"], e["enabled"]) for e in listed["data"]] == [
        (endpoint["id"], "https://hooks.example.com/in", [], True)
    ]
    assert "secret" not in listed["data"][0]  # shown once, at creation

    refused = api.get("/v1/webhooks", **tenant.auth)  # an ordinary key
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_permissions"
    other = make_tenant()
    other_admin = api_key_create(tenant=other.tenant, name="a", created_by="t", is_admin=True)[1]
    stranger = {"HTTP_AUTHORIZATION": f"Bearer {other_admin}"}
    assert api.get("/v1/webhooks", **stranger).json()["data"] == []
    assert api.get(f"/v1/webhooks/{endpoint['id']}", **stranger).status_code == 404

    patched = api.patch(
        f"/v1/webhooks/{endpoint['id']}", {"events": ["image.generation.failed"]}, format="json", **admin
    )
    assert patched.json()["events"] == ["image.generation.failed"]
    bad = api.patch(f"/v1/webhooks/{endpoint['id']}", {"events": ["image.created"]}, format="json", **admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("events")
    assert api.delete(f"/v1/webhooks/{endpoint['id']}", **admin).json()["deleted"] is True
    assert api.get("/v1/webhooks", **admin).json()["data"] == []


REFUSED_TARGETS = [
    "http://127.0.0.1/hook",  # loopback
    "http://localhost:8000/hook",
    "http://10.1.2.3/hook",  # private
    "http://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped IPv6
    "http://[::ffff:a9fe:a9fe]/hook",  # IPv4-mapped link-local, in hex
    "http://[fe80::1]/hook",
    "http://[::1]/hook",
]


@pytest.mark.parametrize("url", REFUSED_TARGETS)
def test_a_non_public_webhook_url_is_refused_before_anything_is_held(api, registry, tenant, url):
    response = post_json(api, URL, {**SMALL, "webhook_url": url}, tenant, **ASYNC)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "webhook_url"
    assert not Job.objects.exists()


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/hook", "https://u:p@example.com/", "https://"])
def test_a_webhook_url_that_is_not_an_http_url_is_400(api, registry, tenant, url):
    response = post_json(api, URL, {**SMALL, "webhook_url": url}, tenant, **ASYNC)
    assert response.status_code == 400 and response.json()["error"]["param"] == "webhook_url"


def test_a_too_long_webhook_url_is_400(api, registry, tenant):
    response = post_json(api, URL, {**SMALL, "webhook_url": "https://example.com/" + "a" * 2000}, tenant, **ASYNC)
    assert response.status_code == 400 and response.json()["error"]["param"] == "webhook_url"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "localhost", "[::ffff:127.0.0.1]", "[::1]"],
)
def test_delivery_refuses_loopback_in_every_notation_when_private_targets_are_not_allowed(host):
    """Names and odd notations are resolved once at delivery, and every answer checked."""
    with pytest.raises(FetchTargetRefused):
        http_post(f"http://{host}:9/x", body=b"{}", headers={}, timeout=2, allow_private=False)


def test_a_delivery_to_a_refused_target_is_given_up_at_once(registry, tenant, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    delivery = _delivery(tenant, url="http://127.0.0.1:9/x")
    assert services.webhook_delivery_attempt(delivery_id=delivery.pk, attempt=1) == "failed"
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == 1 and "non-public" in delivery.last_error


def test_a_rotated_secret_signs_with_both_secrets_during_the_grace_period(api, registry, tenant, admin, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    created = _endpoint(api, admin, "https://hooks.example.com/in")
    rotated = api.post(f"/v1/webhooks/{created['id']}/rotate_secret", **admin).json()
    assert rotated["secret"] != created["secret"] and rotated["previous_secret_expires_at"] > time.time()

    endpoint = WebhookEndpoint.objects.get(pk=created["id"])
    body = json.dumps({"type": "image.generation.completed"})
    now = timezone.now()
    headers = services.signed_headers(event_id="msg_1", body=body, secrets=endpoint.signing_secrets(now), at=now)
    assert headers["webhook-signature"].count("v1,") == 2
    assert Webhook(created["secret"]).verify(body, headers)  # the old secret still verifies
    assert Webhook(rotated["secret"]).verify(body, headers)

    endpoint.previous_secret_expires_at = now - timedelta(seconds=1)  # the grace period is over
    endpoint.save()
    headers = services.signed_headers(event_id="msg_2", body=body, secrets=endpoint.signing_secrets(now), at=now)
    assert Webhook(rotated["secret"]).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(created["secret"]).verify(body, headers)


def _delivery(tenant, *, url: str, endpoint: WebhookEndpoint | None = None) -> WebhookDelivery:
    import uuid

    return WebhookDelivery.objects.create(
        tenant=tenant.tenant,
        endpoint=endpoint,
        url=url,
        dedupe_key=uuid.uuid4().hex,
        event_id="msg_" + uuid.uuid4().hex,
        event_type="image.generation.completed",
        payload={"id": "evt_x", "object": "event", "type": "image.generation.completed", "data": {}},
    )


def test_an_endpoint_failing_for_a_day_is_disabled_its_owner_emailed_and_can_send_again(
    api, worker, tenant, admin, receiver, settings
):
    from django.contrib.auth import get_user_model

    from accounts.models import Membership

    owner = get_user_model().objects.create_user("owner", email="owner@example.com", password="x")
    Membership.objects.create(tenant=tenant.tenant, user=owner, role=Membership.Role.OWNER)
    receiver.always_fail = True
    created = _endpoint(api, admin, receiver.url)
    endpoint = WebhookEndpoint.objects.get(pk=created["id"])

    # Failing, but for less than a day: retried, still enabled.
    delivery = _delivery(tenant, url=receiver.url, endpoint=endpoint)
    assert services.webhook_delivery_attempt(delivery_id=delivery.pk, attempt=1) == "retry"
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is not None and endpoint.consecutive_failures >= 1
    assert services.webhook_delivery_attempt(delivery_id=delivery.pk, attempt=1) == "skipped"  # a duplicate

    # Every attempt has failed for a day: the next failure disables it and emails the owner once.
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - timedelta(days=1, seconds=1))
    receiver.wait_for(lambda rs: len(rs) >= 2)  # (the retry queued above)
    _until(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "failed")
    endpoint.refresh_from_db()
    assert not endpoint.enabled and endpoint.disabled_at is not None
    assert [m.to for m in mail.outbox] == [["owner@example.com"]]
    assert endpoint.url in mail.outbox[0].subject
    delivery.refresh_from_db()
    assert api.get("/v1/webhooks", **admin).json()["data"][0]["enabled"] is False

    # Sending again needs the endpoint enabled; then it is delivered with the same webhook-id.
    retry_url = f"/v1/webhooks/{endpoint.pk}/deliveries/{delivery.pk}/retry"
    assert api.post(retry_url, **admin).json()["error"]["code"] == "endpoint_disabled"
    api.patch(f"/v1/webhooks/{endpoint.pk}", {"enabled": True}, format="json", **admin)
    receiver.always_fail = False
    assert api.post(retry_url, **admin).status_code == 200
    requests = receiver.wait_for(lambda rs: rs[-1]["status"] == 204)
    assert requests[-1]["headers"]["webhook-id"] == delivery.event_id
    _until(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "delivered")


def test_retry_delays_grow_exponentially_with_jitter_up_to_the_cap(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 5
    settings.WEBHOOK_RETRY_MAX_SECONDS = 21_600
    for attempt, nominal in [(1, 5), (2, 10), (5, 80), (13, 20_480), (14, 21_600), (30, 21_600)]:
        delay = services.retry_delay_seconds(attempt)
        assert nominal * 0.8 <= delay <= nominal * 1.2


def _signed_in(tenant, name: str, role: str):
    from django.contrib.auth.models import User
    from django.test import Client

    from accounts.models import Membership

    user = User.objects.create_user(name, f"{name}@example.com", "plum-orbit-tandem-42")
    Membership.objects.create(tenant=tenant.tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


def test_the_dashboard_page_creates_an_endpoint_shows_its_secret_once_and_sends_again(registry, tenant, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    owner = _signed_in(tenant, "owner", "owner")
    created = owner.post(
        "/dashboard/webhooks/", {"url": "https://hooks.example.com/x", "events": ["image.generation.failed"]}
    )
    assert created.status_code == 200
    endpoint = WebhookEndpoint.objects.get(tenant=tenant.tenant)
    assert endpoint.secret in created.content.decode() and endpoint.events == ["image.generation.failed"]
    page = owner.get("/dashboard/webhooks/").content.decode()
    assert "https://hooks.example.com/x" in page and endpoint.secret not in page  # shown once

    refused = owner.post("/dashboard/webhooks/", {"url": "http://169.254.169.254/"})
    assert refused.status_code == 400 and WebhookEndpoint.objects.count() == 1

    delivery = _delivery(tenant, url=endpoint.url, endpoint=endpoint)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", attempts=3, last_error="HTTP 500")
    assert "HTTP 500" in owner.get("/dashboard/webhooks/").content.decode()
    assert owner.post(f"/dashboard/webhooks/deliveries/{delivery.pk}/retry/").status_code == 302
    delivery.refresh_from_db()
    assert delivery.status == "pending"  # queued to be sent again (attempt 4)

    member = _signed_in(tenant, "member", "member")
    assert member.get("/dashboard/webhooks/").status_code == 200
    assert member.post(f"/dashboard/webhooks/{endpoint.pk}/delete/").status_code == 403
    assert owner.post(f"/dashboard/webhooks/{endpoint.pk}/toggle/").status_code == 302
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).enabled is False
    assert owner.post(f"/dashboard/webhooks/{endpoint.pk}/delete/").status_code == 302
    assert not WebhookEndpoint.objects.exists()
