"""Request ids (the SDK reads x-request-id into exc.request_id) and rate-limit headers on every response."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from core.logging import log_context_bind, log_context_clear

        request.request_id = "req_" + uuid.uuid4().hex
        log_context_clear()  # a gunicorn thread serves many requests: nothing carries over
        log_context_bind(request_id=request.request_id)
        response = self.get_response(request)
        response["x-request-id"] = request.request_id
        for name, value in getattr(request, "ratelimit_headers", {}).items():
            response.setdefault(name, value)
        return response


class BodySizeLimitMiddleware:
    """413 before anything reads a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE (DRF's
    JSON parser reads the stream itself and would not stop)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.conf import settings

        from core.errors import PayloadTooLarge, json_error_response

        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return json_error_response(
                PayloadTooLarge(
                    f"The request body is {length} bytes; the limit is {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}."
                )
            )
        return self.get_response(request)


class NullByteGuardMiddleware:
    """A NUL byte in the path is a 404 and one in a query parameter a 400 naming it,
    before any view: PostgreSQL refuses NUL in text, so such a value reaching a lookup
    would be a 500. (Bodies are covered by DRF's CharField, which refuses NUL.)"""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
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
        return self.get_response(request)
