"""Request ids (the SDK reads x-request-id into exc.request_id) and rate-limit headers on every response."""
from __future__ import annotations

import uuid
from typing import Callable

from django.http import HttpRequest, HttpResponse


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.request_id = "req_" + uuid.uuid4().hex
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
            return json_error_response(PayloadTooLarge(
                f"The request body is {length} bytes; the limit is {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}."))
        return self.get_response(request)


class NullByteGuardMiddleware:
    """400 for a NUL byte anywhere in the path or the query string, before any view:
    PostgreSQL refuses NUL in text, so such a value reaching a lookup would be a 500.
    (Bodies are covered by DRF's CharField, which refuses NUL characters.)"""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.http import HttpResponseBadRequest

        from core.errors import InvalidRequest, json_error_response

        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "%00" in query.lower() or "\x00" in query:
            if request.path.startswith(("/v1/", "/api/")):
                return json_error_response(InvalidRequest("The URL must not contain NUL characters.",
                                                          code="invalid_url"))
            return HttpResponseBadRequest("The URL must not contain NUL characters.")
        return self.get_response(request)
