"""`GET /v1/images/tasks/{id}` of a queued or running task answered on the event loop,
before Django (issue 20: 1,000 polls per second per web process).

A short poll of a live task costs no PostgreSQL query already (the key from
accounts.key_cache, the task from images.task_status, its place from
images.queue_position, the rate limit in one pipelined round trip); what was left was
Django and DRF themselves (about twenty middlewares, negotiation, throttles, the
serializer) and two thread-pool hops. `task_poll_answer` makes the same answer from the
same functions, on the event loop (core.waiting.fast_route_register, registered by
ImagesConfig.ready), and is consulted only by the ASGI server (PooledASGIHandler).

When it answers. Only when its answer is certain to be Django's: a GET without a body
whose query is empty or `wait=0`; one `Authorization: Bearer <prefix>.<secret>` whose
key row is in the cache, accepted (not revoked or expired, the secret matches a
preferred-hasher hash), of an active tenant, created by no other key (a parent's rpm
needs the parent's row) and whose last_used_at is fresh (a stale one is written by
Django's authentication), and unless the row is due for its refresh and this request
claims it (accounts.key_cache: one request in a few seconds reads the row anew through
Django; the others answer from it); a live snapshot (queued or running) of the key's
tenant; no cookie; the middleware chain and TaskViewSet's DRF classes this module mirrors (the JSON
renderer alone: no negotiation) and an Accept it takes without parameters (none, `*/*`,
`application/json`); a Host in ALLOWED_HOSTS; no SSL redirect, no user-agent ban and no
script prefix. Everything else (a bad or unknown key: 401; a suspended tenant: 403;
another tenant's or a final task: the row; a long poll; an error) returns None, and
Django answers exactly as before.

The rate limit is counted exactly once: every check above is made first, then the
request is counted (accounts.ratelimit.rate_limit_check), and from then on this module
answers: 200 with the task, or the 429 envelope with the headers Django gives it (built
by core.errors.exception_handler, counted in imagegen_api_errors_total, logged on
django.request as Django logs a 4xx).

The answer carries Django's headers (tests/images/test_task_poll_fast.py compares them
with the fast path on and off): DRF's (Content-Type, Retry-After, Allow), the
middlewares' (X-Frame-Options, Content-Length, SecurityMiddleware's, x-request-id, the
x-ratelimit-* headers). Counted in `imagegen_task_polls_fast_total{status}`; the
request's log context (request_id, tenant, key_prefix) is bound as Django's path binds
it; x-request-id is made here as RequestIdMiddleware makes it (never the client's); the
access log is the server's (gunicorn's ACCESS_LOG), the same for both paths. Off with
TASK_POLL_FAST=false (docs/configuration.md).

Cost. Three Redis round trips, made with the sync clients on the event loop: the key
row (the cache's Redis), the snapshot with the task's queue positions in one pipeline
(task_status_read_placed: the broker's Redis), the rate-limit count (one pipeline). A
sync GET measured 46 us of CPU here against 93 us with redis.asyncio, and CPU per poll
is what bounds a web process; the loop is held about 0.2 ms per poll. Measured with
`manage.py bench --phase web --waiting 0 --streams 0 --pollers 1000 --abandon 0` on the
2-core machine: about 5x fewer CPU-milliseconds per poll than Django's path (issue 20).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils import timezone
from prometheus_client import Counter
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer

from accounts.authentication import APIKeyAuthentication, api_key_accepts, last_used_stale
from accounts.key_cache import api_key_cache_refresh_claim, api_key_cache_refresh_due, api_key_cached
from accounts.principals import Caller, tenant_is_active
from accounts.ratelimit import RequestRateThrottle, rate_limit_check
from core.errors import RateLimited, exception_handler
from core.logging import log_context_bind, log_context_clear
from core.middleware import request_id_new
from core.waiting import FastAnswer
from images import task_status
from images.models import Job
from images.serializers import TaskSerializer, task_fields_from_status
from images.tasks_api import TaskViewSet, task_headers

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("django.request")  # where Django logs a 4xx answer

TASK_PATH = "/v1/images/tasks/"
# DRF's Allow for the task route (TaskViewSet: retrieve and destroy, HEAD with GET, OPTIONS).
ALLOW = "GET, DELETE, HEAD, OPTIONS"
# The queries a short poll may carry (?wait=0 is the same as no wait).
SHORT_POLL_QUERIES = frozenset({b"", b"wait=0"})
# Accept values DRF's content negotiation answers with the plain JSON renderer.
JSON_ACCEPTS = frozenset({"", "*/*", "application/json"})
# The request headers read here; a second copy of any of them goes to Django.
_READ = frozenset({"authorization", "host", "accept", "x-forwarded-host", "x-forwarded-proto"})
_LIVE = frozenset({Job.Status.QUEUED, Job.Status.RUNNING})
# The middleware chain whose effect on a task poll this module reproduces (the headers of
# SecurityMiddleware, XFrameOptionsMiddleware, CommonMiddleware and RequestIdMiddleware;
# the others add nothing to it). Any other chain, and Django answers every poll: a new
# middleware must be looked at here first (the tests then show its headers).
MIRRORED_MIDDLEWARE = frozenset(
    {
        "django_prometheus.middleware.PrometheusBeforeMiddleware",
        "core.middleware.RequestIdMiddleware",
        "core.middleware.BodySizeLimitMiddleware",
        "core.middleware.NullByteGuardMiddleware",
        "django.middleware.security.SecurityMiddleware",
        "core.middleware.StaticFilesMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "allauth.account.middleware.AccountMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
        "django_prometheus.middleware.PrometheusAfterMiddleware",
        "axes.middleware.AxesMiddleware",
        "core.middleware.WaitingMiddleware",
    }
)

TASK_POLLS_FAST = Counter(
    "imagegen_task_polls_fast",
    "Task polls answered on the event loop, before Django (images/task_poll.py), by status",
    ["status"],
)
_renderer = JSONRenderer()
# One TaskSerializer, its fields bound once (a new one deep-copies them: ~0.7 ms a poll);
# to_representation keeps no state between calls. Used on the event loop only.
_task_serializer = TaskSerializer()


def _headers(scope: dict[str, Any]) -> dict[str, str] | None:
    """The request headers this module reads (lower-case names, latin-1 values, as
    Django decodes them); None when one comes twice or a cookie comes (Django then)."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name == "cookie":
            return None
        if name in _READ:
            if name in found:
                return None
            found[name] = raw_value.decode("latin-1")
    return found


def _is_secure(scope: dict[str, Any], headers: dict[str, str]) -> bool:
    """HttpRequest.is_secure for this scope (SECURE_PROXY_SSL_HEADER, else the scheme)."""
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        header, secure_value = proxy
        name = header.removeprefix("HTTP_").replace("_", "-").lower()
        if name not in _READ:
            raise ValueError(f"SECURE_PROXY_SSL_HEADER {header} is not read by the fast task poll")
        value = headers.get(name)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme", "http") == "https"


def _host_allowed(headers: dict[str, str]) -> bool:
    """HttpRequest.get_host would not raise DisallowedHost (CommonMiddleware asks it)."""
    host = headers.get("x-forwarded-host") if settings.USE_X_FORWARDED_HOST else None
    host = host if host is not None else headers.get("host")
    if not host or not settings.ALLOWED_HOSTS:
        return False
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def _middleware_headers(secure: bool) -> list[tuple[str, str]]:
    """What XFrameOptionsMiddleware and SecurityMiddleware add to a JSON answer, in
    their order (HSTS only on a secure request)."""
    added = [("X-Frame-Options", getattr(settings, "X_FRAME_OPTIONS", "DENY").upper())]
    if settings.SECURE_HSTS_SECONDS and secure:
        sts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            sts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            sts += "; preload"
        added.append(("Strict-Transport-Security", sts))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        added.append(("X-Content-Type-Options", "nosniff"))
    policy = settings.SECURE_REFERRER_POLICY
    if policy:
        value = ",".join([v.strip() for v in policy.split(",")] if isinstance(policy, str) else policy)
        added.append(("Referrer-Policy", value))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        added.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    return added


def _render(data: Any) -> bytes:
    """The body as DRF's JSONRenderer renders it for `Accept: application/json`."""
    return _renderer.render(data, "application/json", {})


def _answer(
    *, status: int, body: bytes, own: dict[str, str], secure: bool, request_id: str, ratelimit: dict[str, str]
) -> FastAnswer:
    """A rendered DRF answer with the headers Django's chain puts on it, in its order:
    `own` are the view's (or the error's), `ratelimit` the throttle's (RequestIdMiddleware
    sets them unless the answer has them)."""
    frame_options, *security = _middleware_headers(secure)
    headers = [("Content-Type", "application/json"), *own.items(), ("Allow", ALLOW), frame_options]
    headers.append(("Content-Length", str(len(body))))  # (CommonMiddleware, inside SecurityMiddleware)
    headers += security
    headers.append(("x-request-id", request_id))
    names = {name.lower() for name, _ in headers}
    headers += [(name, value) for name, value in ratelimit.items() if name.lower() not in names]
    return FastAnswer(status=status, headers=headers, body=body)


def _django_as_mirrored() -> bool:
    """Whether Django would handle a task poll as this module reproduces it: the same
    middleware chain, TaskViewSet with the project's authentication, permission,
    throttle and the JSON renderer alone (another renderer: DRF negotiates, and adds
    Vary: Accept)."""
    view = TaskViewSet
    return (
        frozenset(settings.MIDDLEWARE) == MIRRORED_MIDDLEWARE
        and list(view.renderer_classes) == [JSONRenderer]
        and list(view.authentication_classes) == [APIKeyAuthentication]
        and list(view.permission_classes) == [IsAuthenticated]
        and list(view.throttle_classes) == [RequestRateThrottle]
    )


def task_poll_answer(scope: dict[str, Any]) -> FastAnswer | None:
    """The answer to a short poll of a queued or running task, or None (Django answers);
    see the module's docstring for when. Runs on the event loop."""
    if not settings.TASK_POLL_FAST or settings.SECURE_SSL_REDIRECT or settings.DISALLOWED_USER_AGENTS:
        return None
    if not _django_as_mirrored():
        return None
    path = scope.get("path", "")
    task_id = path[len(TASK_PATH) :]
    if not path.startswith(TASK_PATH) or not task_id or "/" in task_id or scope.get("root_path"):
        return None
    if scope.get("query_string", b"") not in SHORT_POLL_QUERIES:
        return None
    headers = _headers(scope)
    if headers is None or headers.get("accept", "").strip() not in JSON_ACCEPTS or not _host_allowed(headers):
        return None
    secure = _is_secure(scope, headers)

    # The key, as APIKeyAuthentication checks it, from the cache only.
    parts = headers.get("authorization", "").split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1].strip():
        return None
    raw = parts[1].strip()
    prefix, _, secret = raw.partition(".")
    if not prefix or not secret or len(raw) > 200:
        return None
    key = api_key_cached(prefix=prefix)
    if key is None or key.parent_id is not None:
        return None
    if api_key_cache_refresh_due(key) and api_key_cache_refresh_claim(prefix=prefix):
        return None  # (this one request refreshes the row through Django; the others answer from it)
    if not type(key).objects.key_generator.using_preferred_hasher(key.hashed_key):
        return None  # (an old hash is upgraded, i.e. written, by Django's path)
    if not api_key_accepts(key, raw) or not tenant_is_active(key.tenant) or last_used_stale(key, timezone.now()):
        return None

    # The task, as TaskViewSet._task reads a live one.
    snapshot, positions = task_status.task_status_read_placed(job_id=task_id)  # (one round trip)
    live = task_status.task_status_live(snapshot)
    if live is None or live["tenant"] != str(key.tenant.pk) or live["status"] not in _LIVE:
        return None
    body = _task_serializer.to_representation(task_fields_from_status(job_id=task_id, status=live, positions=positions))
    content = _render(body)

    # Counted from here on: this function answers, whatever the count says (an error of
    # the count itself, Redis failing, goes to Django, which fails the same way).
    request_id = request_id_new()
    log_context_clear()
    log_context_bind(request_id=request_id, tenant=key.tenant.pk, key_prefix=key.prefix)
    caller = Caller(tenant=key.tenant, api_key=key, request_id=request_id)
    try:
        rate_limit_check(caller=caller)
    except RateLimited as error:
        refusal = exception_handler(error, {})
        own = {name: value for name, value in refusal.items() if name.lower() != "content-type"}
        answer = _answer(
            status=refusal.status_code,
            body=_render(refusal.data),
            own=own,
            secure=secure,
            request_id=request_id,
            ratelimit={},
        )
        request_logger.warning(
            "%s: %s", refusal.reason_phrase, path, extra={"status_code": refusal.status_code, "request": None}
        )
        TASK_POLLS_FAST.labels(status=str(refusal.status_code)).inc()
        return answer
    answer = _answer(
        status=200,
        body=content,
        own=task_headers(body),
        secure=secure,
        request_id=request_id,
        ratelimit=caller.ratelimit_headers,
    )
    TASK_POLLS_FAST.labels(status="200").inc()
    return answer
