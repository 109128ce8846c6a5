"""Webhooks (issue 24): a tenant's endpoints, their signing secrets, and the delivery
of `image.generation.completed` / `.failed` / `.cancelled` when a job ends.

The path of one event:

1. A job becomes terminal (images.services.jobs: complete, fail, cancel, abandon, the
   deadline sweep). `webhooks_job_settled` sends `webhook_job_finished` (images.actors,
   queue `default`) from `transaction.on_commit`, never inside a transaction, and only
   when the tenant has an endpoint or the job a `webhook_url` (a cached flag: no query).
2. The actor calls `webhook_events_create`: the event body
   `{id, object: "event", type, created_at, data: <the task object>}` (data rendered
   exactly as `GET /v1/images/tasks/{id}` renders the job), one `WebhookDelivery` per
   target, keyed by (job, event, target) so a redelivered message creates nothing twice,
   and a first `webhook_deliver` message for each.
3. `webhook_delivery_attempt` claims attempt k (a conditional UPDATE on the attempts
   count: a duplicate message does nothing), signs the body with the Standard Webhooks
   scheme (the `standardwebhooks` library: `webhook-id` = the delivery's event id, the
   same on every attempt; `webhook-timestamp`; `webhook-signature: v1,<base64>`, plus a
   second `v1,` signature by the previous secret during a rotation's grace period) and
   POSTs it through core.http_fetch.http_post (resolved once, public addresses only
   unless WEBHOOK_ALLOW_PRIVATE_TARGETS, no redirects, one deadline, 4 KiB of answer read).
4. A 2xx is delivered. Anything else (another status, a timeout, a refused connection)
   schedules attempt k+1 with Dramatiq's message delay: WEBHOOK_RETRY_BASE_SECONDS *
   2**(k-1), capped at WEBHOOK_RETRY_MAX_SECONDS, +-20% jitter, up to
   WEBHOOK_MAX_ATTEMPTS (defaults: 16 attempts over about 23 hours). A target refused as
   non-public is given up at once (a retry would be refused the same way).
5. An endpoint whose attempts have all failed for WEBHOOK_DISABLE_AFTER_SECONDS (a day)
   is disabled and its tenant's owners and admins are emailed, once.

At-least-once: a receiver may see an event twice (a lost answer, a redelivered
message) and deduplicates by `webhook-id`. Nothing here ever touches money.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets as secrets_module
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

from accounts.models import Tenant
from core.errors import InvalidRequest
from images.models import WEBHOOK_EVENTS, Job, TenantWebhookSecret, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

EVENT_OF_STATUS = {
    Job.Status.SUCCEEDED: "image.generation.completed",
    Job.Status.FAILED: "image.generation.failed",
    Job.Status.CANCELLED: "image.generation.cancelled",
}
ANSWER_BYTES = 4096  # of a receiver's answer kept (the rest is never read)
_TARGETS_TTL = 300  # seconds the "has endpoints" flag of a tenant is cached


# ---- secrets ------------------------------------------------------------------------------


def secret_new() -> str:
    """A new signing secret in the Standard Webhooks format: `whsec_` + base64 of 32
    random bytes (what `standardwebhooks.Webhook(secret)` takes)."""
    return "whsec_" + base64.b64encode(secrets_module.token_bytes(32)).decode("ascii")


def _rotate(holder: TenantWebhookSecret | WebhookEndpoint, *, now: datetime) -> str:
    secret = secret_new()
    holder.previous_secret = holder.secret
    holder.previous_secret_expires_at = now + timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_SECONDS)
    holder.secret = secret
    holder.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
    return secret


def endpoint_secret_rotate(*, endpoint: WebhookEndpoint) -> str:
    """Give the endpoint a new secret (returned: shown once); the old one keeps signing
    (a second signature) for WEBHOOK_SECRET_GRACE_SECONDS, so receivers can switch."""
    return _rotate(endpoint, now=timezone.now())


def request_secret_get(*, tenant: Tenant) -> TenantWebhookSecret:
    """The tenant's secret for per-request `webhook_url`s, made on first use."""
    holder, _ = TenantWebhookSecret.objects.get_or_create(tenant=tenant, defaults={"secret": secret_new()})
    return holder


def request_secret_rotate(*, tenant: Tenant) -> str:
    """A new secret for per-request `webhook_url`s (returned: shown once), the old one
    valid for the grace period. The first call makes it."""
    holder, created = TenantWebhookSecret.objects.get_or_create(tenant=tenant, defaults={"secret": secret_new()})
    return holder.secret if created else _rotate(holder, now=timezone.now())


# ---- endpoints ----------------------------------------------------------------------------


def _targets_key(tenant_id: Any) -> str:
    return f"webhooks:has-endpoints:{tenant_id}"


def _targets_forget(tenant_id: Any) -> None:
    try:
        cache.delete(_targets_key(tenant_id))
    except Exception:
        logger.warning("could not clear the webhook flag of tenant %s", tenant_id, exc_info=True)


def tenant_has_endpoints(*, tenant_id: Any) -> bool:
    """Whether the tenant has an enabled endpoint (cached _TARGETS_TTL seconds and
    cleared on every endpoint change, so a settled job costs no query for it)."""
    key = _targets_key(tenant_id)
    try:
        flag = cache.get(key)
    except Exception:
        flag = None
    if flag is None:
        flag = WebhookEndpoint.objects.filter(tenant_id=tenant_id, enabled=True).exists()
        try:
            cache.set(key, flag, _TARGETS_TTL)
        except Exception:
            pass
    return bool(flag)


def _events_check(events: list[str] | None) -> list[str]:
    events = list(dict.fromkeys(events or []))
    unknown = [e for e in events if e not in WEBHOOK_EVENTS]
    if unknown:
        raise InvalidRequest(
            f"Unknown event '{unknown[0]}'; the events are {', '.join(WEBHOOK_EVENTS)}.",
            param="events",
            code="invalid_value",
        )
    return events


def endpoint_create(
    *, tenant: Tenant, url: str, events: list[str] | None = None, description: str = "", enabled: bool = True
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (returned once; `whsec_...`). `events` empty or
    None: every event. 400 naming `url` or `events` when they are not acceptable."""
    from images.fields import webhook_url_check

    endpoint = WebhookEndpoint.objects.create(
        tenant=tenant,
        url=webhook_url_check(url, param="url"),
        events=_events_check(events),
        description=description[:200],
        enabled=enabled,
        secret=secret_new(),
    )
    _targets_forget(tenant.pk)
    return endpoint, endpoint.secret


def endpoint_update(*, endpoint: WebhookEndpoint, changes: dict[str, Any]) -> WebhookEndpoint:
    """Change `url`, `events`, `description` or `enabled`. Enabling a disabled endpoint
    clears its failure record (it gets a fresh day before it is disabled again)."""
    from images.fields import webhook_url_check

    fields = ["updated_at"]
    if "url" in changes:
        endpoint.url = webhook_url_check(changes["url"], param="url")
        fields.append("url")
    if "events" in changes:
        endpoint.events = _events_check(changes["events"])
        fields.append("events")
    if "description" in changes:
        endpoint.description = (changes["description"] or "")[:200]
        fields.append("description")
    if "enabled" in changes:
        endpoint.enabled = bool(changes["enabled"])
        fields.append("enabled")
        if endpoint.enabled:
            endpoint.disabled_at, endpoint.disabled_reason = None, ""
            endpoint.failing_since, endpoint.consecutive_failures = None, 0
            fields += ["disabled_at", "disabled_reason", "failing_since", "consecutive_failures"]
    endpoint.save(update_fields=fields)
    _targets_forget(endpoint.tenant_id)
    return endpoint


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint and its delivery log (pending retries find nothing and stop)."""
    tenant_id = endpoint.tenant_id
    endpoint.delete()
    _targets_forget(tenant_id)


# ---- events -------------------------------------------------------------------------------


def _send(actor_name: str, *args: Any, delay_ms: int | None = None) -> None:
    """Send a message to an actor of images.actors by name (this module is imported by
    images.services.jobs, which images.actors imports: no import cycle)."""
    import dramatiq

    broker = dramatiq.get_broker()
    message = dramatiq.Message(queue_name="default", actor_name=actor_name, args=args, kwargs={}, options={})
    broker.enqueue(message, delay=delay_ms)


def webhooks_job_settled(*, job: Job) -> None:
    """Called by every service that makes a job terminal, after its transaction: sends
    `webhook_job_finished` once the surrounding transaction (if any) commits, when the
    job has somewhere to go. Never raises: a webhook never fails a settle."""
    try:
        if not (job.webhook_url or tenant_has_endpoints(tenant_id=job.tenant_id)):
            return
        job_id = str(job.pk)

        def send() -> None:
            try:
                _send("webhook_job_finished", job_id)
            except Exception:
                logger.warning("could not queue the webhooks of job %s", job_id, exc_info=True)

        transaction.on_commit(send)
    except Exception:
        logger.warning("webhooks for job %s skipped", job.pk, exc_info=True)


def event_body(*, job: Job, event_type: str, created_at: datetime) -> dict[str, Any]:
    """The event as sent: `{id, object: "event", type, created_at, data}`; `data` is
    the task object of GET /v1/images/tasks/{id} (links under PUBLIC_BASE_URL, signed
    for IMAGE_URL_TTL_SECONDS from when the event was made). The id is the same for
    every target of this job's event (`evt_...`)."""
    from images.serializers import task_body

    return {
        "id": "evt_" + uuid.uuid5(uuid.NAMESPACE_URL, f"{job.pk}:{event_type}").hex,
        "object": "event",
        "type": event_type,
        "created_at": int(created_at.timestamp()),
        "data": json.loads(json.dumps(task_body(job=job, base_url=settings.PUBLIC_BASE_URL))),
    }


def webhook_events_create(*, job_id: Any) -> list[WebhookDelivery]:
    """Make the deliveries of a terminal job's event (one per subscribed enabled
    endpoint, one for the job's `webhook_url`) and send the first attempt of each new
    one. Safe to run twice: an existing delivery is not made or sent again."""
    job = Job.objects.select_related("model", "hold").filter(pk=job_id).first()
    if job is None or job.status not in EVENT_OF_STATUS:
        return []
    event_type = EVENT_OF_STATUS[job.status]
    targets: list[tuple[WebhookEndpoint | None, str]] = [
        (endpoint, endpoint.url)
        for endpoint in WebhookEndpoint.objects.filter(tenant_id=job.tenant_id, enabled=True)
        if endpoint.wants(event_type)
    ]
    if job.webhook_url:
        targets.append((None, job.webhook_url))
    if not targets:
        return []
    now = timezone.now()
    body = event_body(job=job, event_type=event_type, created_at=now)
    made = []
    for endpoint, url in targets:
        key = f"{job.pk}:{event_type}:{endpoint.pk if endpoint else 'request'}"
        payload = body if endpoint is not None else _request_target_body(job=job, event=body)
        try:
            with transaction.atomic():
                delivery, created = WebhookDelivery.objects.get_or_create(
                    dedupe_key=key,
                    defaults={
                        "tenant_id": job.tenant_id,
                        "endpoint": endpoint,
                        "url": url,
                        "job": job,
                        "event_id": "msg_" + uuid.uuid4().hex,
                        "event_type": event_type,
                        "payload": payload,
                        "next_attempt_at": now,
                    },
                )
        except IntegrityError:  # a concurrent run made it first
            continue
        if created:
            made.append(delivery)
    for delivery in made:
        _send("webhook_deliver", str(delivery.pk), 1)
    return made


def _request_target_body(*, job: Job, event: dict[str, Any]) -> dict[str, Any]:
    """What a job's own target (`webhook_url`) receives: the event, except for a
    Midjourney-proxy task, whose `notifyHook` gets the proxy's task object as is (the
    proxy posts its Task, not an envelope; images/services/midjourney.py)."""
    if job.endpoint.startswith(MIDJOURNEY_PREFIX):
        found = import_string(MIDJOURNEY_BODY)(job_id=job.pk)
        if found is not None:
            return found
    return event


# Jobs made by the Midjourney-proxy shape (their `endpoint` starts with it), and its
# functions, named rather than imported (as `_send` names actors): the shape's module
# imports the generation service, which leads back here.
MIDJOURNEY_PREFIX = "/mj/"
MIDJOURNEY_BODY = "images.services.midjourney.mj_notify_body"
MIDJOURNEY_NOTIFY = "images.services.midjourney.mj_notify"


def webhooks_job_started(*, job: Job) -> None:
    """Called when a worker claims a job (images.services.jobs.job_start). Only a
    Midjourney-proxy task with a `notifyHook` is told: the proxy posts its task on every
    change, IN_PROGRESS included, where issue 24's events are about a job's end. Never
    raises: a webhook never fails a job."""
    if not job.webhook_url or not job.endpoint.startswith(MIDJOURNEY_PREFIX):
        return
    try:
        import_string(MIDJOURNEY_NOTIFY)(job_id=job.pk, stage="IN_PROGRESS")
    except Exception:
        logger.warning("the start notification of job %s was skipped", job.pk, exc_info=True)


def webhook_payload_deliver(
    *, job: Job, url: str, event_type: str, payload: dict[str, Any], dedupe_key: str
) -> WebhookDelivery | None:
    """Deliver a vendor shape's own body (a Midjourney-proxy task on `notifyHook`) to
    one URL by the same path as the events: one `WebhookDelivery` (keyed by
    `dedupe_key`: made once, however often this is called), signed with the tenant's
    request secret, retried, public targets only. Call it outside a transaction (or
    from on_commit). Returns the new delivery, or None when it existed already."""
    now = timezone.now()
    try:
        with transaction.atomic():
            delivery, created = WebhookDelivery.objects.get_or_create(
                dedupe_key=dedupe_key[:200],
                defaults={
                    "tenant_id": job.tenant_id,
                    "endpoint": None,
                    "url": url,
                    "job": job,
                    "event_id": "msg_" + uuid.uuid4().hex,
                    "event_type": event_type[:64],
                    "payload": json.loads(json.dumps(payload)),
                    "next_attempt_at": now,
                },
            )
    except IntegrityError:  # a concurrent call made it first
        return None
    if not created:
        return None
    _send("webhook_deliver", str(delivery.pk), 1)
    return delivery


# ---- delivery -----------------------------------------------------------------------------


def retry_delay_seconds(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`, after attempt `attempt` (1-based) failed:
    WEBHOOK_RETRY_BASE_SECONDS * 2**(attempt-1), at most WEBHOOK_RETRY_MAX_SECONDS,
    times a jitter from 0.8 to 1.2 (so that retries of many events spread out)."""
    base = settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** min(attempt - 1, 40)
    return min(base, settings.WEBHOOK_RETRY_MAX_SECONDS) * random.uniform(0.8, 1.2)


def signed_headers(*, event_id: str, body: str, secrets: list[str], at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for `body` sent at `at`: one `v1,` signature per
    secret (the current one first), space-separated as the specification allows."""
    from standardwebhooks import Webhook

    at = at.astimezone(UTC)
    signatures = " ".join(Webhook(secret).sign(msg_id=event_id, timestamp=at, data=body) for secret in secrets)
    return {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
    }


def _signing_secrets(delivery: WebhookDelivery, now: datetime) -> list[str]:
    if delivery.endpoint is not None:
        return delivery.endpoint.signing_secrets(now)
    return request_secret_get(tenant=delivery.tenant).signing_secrets(now)


def webhook_delivery_attempt(*, delivery_id: Any, attempt: int) -> str:
    """Run attempt number `attempt` (1-based) of a delivery; returns what happened:
    "delivered", "retry" (the next attempt is queued), "failed" (given up), or "skipped"
    (not pending, or this attempt was already made: a duplicate message)."""
    from core.http_fetch import FetchRefused, FetchTargetRefused, http_post

    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=WebhookDelivery.Status.PENDING, attempts=attempt - 1
    ).update(attempts=attempt, next_attempt_at=None)
    if not claimed:
        return "skipped"
    delivery = WebhookDelivery.objects.select_related("endpoint", "tenant").get(pk=delivery_id)
    endpoint = delivery.endpoint
    if endpoint is not None and not endpoint.enabled:
        _give_up(delivery, "The endpoint is disabled.")
        return "failed"
    now = timezone.now()
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
    headers = signed_headers(event_id=delivery.event_id, body=body, secrets=_signing_secrets(delivery, now), at=now)
    status_code, error, permanent = None, "", False
    try:
        answer = http_post(
            delivery.url,
            body=body.encode(),
            headers=headers,
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
            allow_private=settings.WEBHOOK_ALLOW_PRIVATE_TARGETS,
            max_bytes=ANSWER_BYTES,
        )
        status_code = answer.status
        if not 200 <= answer.status < 300:
            error = f"HTTP {answer.status}: {answer.body[:200].decode('utf-8', 'replace')}".strip()
    except FetchTargetRefused as exc:
        error, permanent = exc.message, True
    except FetchRefused as exc:
        error = exc.message
    except Exception as exc:  # never let one receiver's oddity escape as a retried message
        error = f"{exc.__class__.__name__}: {exc}"
    if not error:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.DELIVERED, delivered_at=now, last_status_code=status_code, last_error=""
        )
        if endpoint is not None:
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=None, consecutive_failures=0)
        return "delivered"
    WebhookDelivery.objects.filter(pk=delivery.pk).update(last_status_code=status_code, last_error=error[:500])
    disabled = endpoint is not None and _endpoint_failed(endpoint, now=now)
    if permanent or disabled or attempt >= settings.WEBHOOK_MAX_ATTEMPTS:
        _give_up(delivery, None)
        return "failed"
    delay = retry_delay_seconds(attempt)
    WebhookDelivery.objects.filter(pk=delivery.pk, attempts=attempt).update(
        next_attempt_at=now + timedelta(seconds=delay)
    )
    _send("webhook_deliver", str(delivery.pk), attempt + 1, delay_ms=int(delay * 1000))
    return "retry"


def _give_up(delivery: WebhookDelivery, error: str | None) -> None:
    changes: dict[str, Any] = {"status": WebhookDelivery.Status.FAILED, "next_attempt_at": None}
    if error:
        changes["last_error"] = error
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**changes)


def _endpoint_failed(endpoint: WebhookEndpoint, *, now: datetime) -> bool:
    """Record a failed attempt; disable the endpoint (and email once) when its attempts
    have all failed for WEBHOOK_DISABLE_AFTER_SECONDS. Returns whether it is disabled."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=True).update(failing_since=now)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=F("consecutive_failures") + 1)
    since = now - timedelta(seconds=settings.WEBHOOK_DISABLE_AFTER_SECONDS)
    reason = f"Every delivery failed for {settings.WEBHOOK_DISABLE_AFTER_SECONDS // 3600 or 1} h or more."
    won = WebhookEndpoint.objects.filter(pk=endpoint.pk, enabled=True, failing_since__lte=since).update(
        enabled=False, disabled_at=now, disabled_reason=reason[:200]
    )
    if won:
        _targets_forget(endpoint.tenant_id)
        logger.warning("webhook endpoint %s disabled: %s", endpoint.pk, reason)
        try:
            endpoint_disabled_email_send(endpoint_id=endpoint.pk)
        except Exception:
            logger.warning("could not email about disabled endpoint %s", endpoint.pk, exc_info=True)
        return True
    return not WebhookEndpoint.objects.filter(pk=endpoint.pk, enabled=True).exists()


def endpoint_disabled_email_send(*, endpoint_id: Any) -> int:
    """Tell the tenant's owners and admins that an endpoint was disabled. Returns emails sent."""
    from django.core.mail import send_mail

    from accounts.models import Membership

    endpoint = WebhookEndpoint.objects.select_related("tenant").get(pk=endpoint_id)
    recipients = sorted(
        {
            m.user.email
            for m in Membership.objects.filter(
                tenant_id=endpoint.tenant_id, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN]
            ).select_related("user")
            if m.user.email
        }
    )
    if not recipients:
        return 0
    return send_mail(
        f"{settings.ACCOUNT_EMAIL_SUBJECT_PREFIX}Webhook endpoint disabled: {endpoint.url[:80]}",
        f"The webhook endpoint {endpoint.url} of {endpoint.tenant.name} was disabled: {endpoint.disabled_reason}\n\n"
        f"Its last error: see the delivery log at {settings.PUBLIC_BASE_URL}/dashboard/webhooks/.\n"
        "Enable it again there (or PATCH /v1/webhooks/{id} with enabled=true) once it answers 2xx; "
        "deliveries that were given up can be sent again from the log.\n",
        None,
        recipients,
    )


def delivery_retry(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again now ("send again"): same event id and body, the next
    attempt number, whatever its status was. 400 when its endpoint is disabled."""
    if delivery.endpoint is not None and not delivery.endpoint.enabled:
        raise InvalidRequest(
            "The endpoint is disabled; enable it before sending again.", param="id", code="endpoint_disabled"
        )
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=WebhookDelivery.Status.PENDING, next_attempt_at=now)
    delivery.refresh_from_db()
    _send("webhook_deliver", str(delivery.pk), delivery.attempts + 1)
    return delivery
