"""Request ids (the SDK reads x-request-id into exc.request_id) and rate-limit headers on
every response; request guards; the ASGI waits (WaitingMiddleware).

Every middleware in settings.MIDDLEWARE must be async-capable: under the ASGI server
(core/waiting.py) Django would otherwise run the chain below a sync-only one on a
thread, and a waiting request would hold that thread again. Ours take both paths
(`DualMiddleware`); whitenoise's is sync-only, so `StaticFilesMiddleware` wraps it
narrowly (only a static file is served on a thread). tests/test_middleware_async.py
keeps the chain fully async-capable.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware


class DualMiddleware:
    """A middleware with a sync and an async path: `before(request)` may answer at once
    (a response) or return None; `after(request, response)` may change the answer."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        early = self.before(request)
        if early is not None:
            return self.after(request, early)
        return self.after(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        early = self.before(request)
        if early is not None:
            return self.after(request, early)
        return self.after(request, await self.get_response(request))


def request_id_new() -> str:
    """A request's id (x-request-id, and `request_id` on its log lines): always made
    here, never taken from the client."""
    return "req_" + uuid.uuid4().hex


class RequestIdMiddleware(DualMiddleware):
    def before(self, request: HttpRequest) -> None:
        from core.logging import log_context_bind, log_context_clear

        request.request_id = request_id_new()
        log_context_clear()  # a gunicorn thread serves many requests: nothing carries over
        log_context_bind(request_id=request.request_id)
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response["x-request-id"] = request.request_id
        for name, value in getattr(request, "ratelimit_headers", {}).items():
            response.setdefault(name, value)
        return response


class BodySizeLimitMiddleware(DualMiddleware):
    """413 before anything reads a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE (DRF's
    JSON parser reads the stream itself and would not stop). A LoRA upload (POST
    /v1/loras, issue 23) may instead be LORA_UPLOAD_MAX_BYTES plus 1 MiB for the form
    around the file (Django streams its files to disk, never into memory)."""

    LORA_UPLOADS = "/v1/loras"
    FORM_SLACK = 1024 * 1024

    def before(self, request: HttpRequest) -> HttpResponse | None:
        from django.conf import settings

        from core.errors import PayloadTooLarge, json_error_response

        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if request.method == "POST" and request.path.rstrip("/") == self.LORA_UPLOADS:
            limit = settings.LORA_UPLOAD_MAX_BYTES + self.FORM_SLACK
        if length > limit:
            return json_error_response(PayloadTooLarge(f"The request body is {length} bytes; the limit is {limit}."))
        return None


class NullByteGuardMiddleware(DualMiddleware):
    """A NUL byte in the path is a 404 and one in a query parameter a 400 naming it,
    before any view: PostgreSQL refuses NUL in text, so such a value reaching a lookup
    would be a 500. (Bodies are covered by DRF's CharField, which refuses NUL.)"""

    def before(self, request: HttpRequest) -> HttpResponse | None:
        from django.http import HttpResponseBadRequest, HttpResponseNotFound

        from core.errors import InvalidRequest, NotFound, json_error_response

        api = request.path.startswith(("/v1/", "/api/"))
        if "\x00" in request.path:
            if api:
                return json_error_response(NotFound("The requested resource was not found.", code="not_found"))
            return HttpResponseNotFound("Not found.")
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query.lower() or "\x00" in query:
            names = [
                name
                for name, values in request.GET.lists()
                if "\x00" in name or any("\x00" in value for value in values)
            ]
            param = names[0].replace("\x00", "") if names else None
            message = (
                f"The query parameter '{param}' must not contain NUL characters."
                if param
                else "The query string must not contain NUL characters."
            )
            if api:
                return json_error_response(InvalidRequest(message, param=param, code="invalid_value"))
            return HttpResponseBadRequest(message)
        return None


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """whitenoise's middleware with an async path: a request for a static file is served
    as whitenoise serves it (on a thread); any other request goes on without a thread."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(get_response, *args, **kwargs)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


class WaitingMiddleware(DualMiddleware):
    """The innermost middleware, for an async middleware chain (Django's own
    ASGIHandler): runs the sync view on a thread (at most WEB_THREADS at a time), and
    when the view answers with a `DeferredResponse`, waits for it on the event loop and
    renders its answer on a thread (core/waiting.py). When the client disconnects,
    Django cancels this request: the view's cleanups run (a job not yet started is
    abandoned, nothing charged). Under WSGI, and under the application platform/asgi.py
    serves (core.waiting.PooledASGIHandler loads the chain sync and does this waiting
    itself, in fewer thread hops), it does nothing."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        from core.waiting import AsgiClientWatch, DeferredResponse, run_sync, run_sync_view

        watch = AsgiClientWatch()
        request.META["platform.client_watch"] = watch
        try:
            response = await run_sync_view(self.get_response, request)
            if not isinstance(response, DeferredResponse):
                return response
            try:
                outcome = await response.wait()
                return await run_sync(response.finish, outcome)
            finally:
                if response.slot is not None:
                    response.slot.release()
        except asyncio.CancelledError:
            await asyncio.shield(watch.leave_async())
            raise
        finally:
            if not watch.left:
                watch.settle()
