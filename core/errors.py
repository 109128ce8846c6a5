"""Typed API errors and the one renderer that turns every error into OpenAI's envelope.

`{"error": {"message", "type", "param", "code"}}` (reference §8.1). Statuses follow
reference §8.3: anything a retry cannot fix is 4xx (never 408/409/429/5xx), and
non-transient 5xx carry `x-should-retry: false` so the official SDK does not
re-submit (and re-bill) the request.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger(__name__)

NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
    "username) if you're accessing the API from your browser and are prompted for a username and "
    "password. You can obtain an API key from your platform operator."
)
MALFORMED_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The API expects a JSON payload, but what was sent was not valid JSON.)"
)


class APIError(Exception):
    """Base for domain errors; subclasses set the class attributes. `data`: fields the
    error object carries beside the four envelope fields (as Zulip's
    `JsonableError.data_fields`), so a client reads the numbers without parsing the
    sentence; the envelope's own four are never overwritten."""

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    should_retry: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.data = dict(data or {})
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        if status_code is not None:
            self.status_code = status_code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body = error_body(self.message, type=self.type, param=self.param, code=self.code)
        body["error"].update({name: value for name, value in self.data.items() if name not in body["error"]})
        return body


class InvalidRequest(APIError):
    status_code = 400


class MissingAPIKey(APIError):
    status_code = 401
    code = None


class InvalidAPIKey(APIError):
    status_code = 401
    code = "invalid_api_key"


class PermissionDeniedError(APIError):
    status_code = 403


class NotFound(APIError):
    status_code = 404


class InsufficientCredits(APIError):
    """402 `insufficient_quota`: the tenant's credits do not cover a request. The error
    object carries its numbers as fields beside the sentence, all integer credits:
    `required` (the request's price), `available` (balance minus held; negative while
    the account owes credits after a refunded or disputed payment) and `held` (reserved
    by jobs in flight). The sentence is written here, once, from those numbers.

    While payments or vouchers are on (settings.TOP_UP_URL), every one names where to
    top up, in the message and as `top_up_url` (an extra field: the four envelope
    fields stay as they are), as AIGNE Hub's 402 carries a payment link. A subclass
    with other numbers (billing.errors.KeyBudgetExceeded) passes its own sentence and
    fields to APIError's constructor."""

    status_code = 402
    type = "insufficient_quota"
    code = "insufficient_quota"
    offers_top_up = True  # False where buying credits would not help (a key's own budget)

    def __init__(self, *, required: int, available: int, held: int) -> None:
        owed = max(0, -available)
        if owed:  # a debt is named as one, never as a negative available balance
            message = (
                f"Insufficient credits: this request costs {required} credits and your account owes {owed} "
                "credits (credits of a refunded or disputed payment, already spent or held). Nothing can be "
                "spent until new credits cover the debt."
            )
        else:
            message = (
                f"Insufficient credits: this request costs {required} credits and your available balance is "
                f"{available} credits ({available + held} total, {held} held by requests in flight)."
            )
        super().__init__(message, data={"required": required, "available": available, "held": held})

    def body(self) -> dict[str, Any]:
        from django.conf import settings

        body = super().body()
        url = getattr(settings, "TOP_UP_URL", "") if self.offers_top_up else ""
        if url:
            if url.startswith("/"):
                url = getattr(settings, "PUBLIC_BASE_URL", "") + url  # still relative: the handler completes it
            body["error"]["message"] = f"{self.message} Add credits at {url}"
            body["error"]["top_up_url"] = url
        return body


def _absolute_top_up(body: dict[str, Any], request: Any) -> None:
    """A relative top_up_url (no PUBLIC_BASE_URL) made absolute with the request's host."""
    error = body.get("error", {})
    url = error.get("top_up_url")
    if url and url.startswith("/") and request is not None:
        absolute = request.build_absolute_uri(url)
        error["top_up_url"] = absolute
        error["message"] = error["message"].replace(f"Add credits at {url}", f"Add credits at {absolute}")


class RateLimited(APIError):
    status_code = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class UpstreamError(APIError):
    """The model failed: 502 like the seeds' 'upstream error'; retrying will not help."""

    status_code = 502
    type = "server_error"
    code = "generation_failed"
    should_retry = False


class ServiceUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _first_validation_error(detail: Any, prefix: str | None = None) -> tuple[str | None, str]:
    """Flatten DRF's nested ValidationError detail to (param, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            param = None if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            return _first_validation_error(value, param if param else prefix)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    return prefix, str(detail)


class PayloadTooLarge(APIError):
    status_code = 413
    code = "request_too_large"


def _to_api_error(exc: Exception) -> APIError | None:
    from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
    from django.db import DatabaseError, InterfaceError, OperationalError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is too large.")
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        return InvalidRequest("The request has too many fields or files.", code="too_many_fields")
    if isinstance(exc, RecursionError):
        return InvalidRequest(MALFORMED_JSON_MESSAGE + " (The JSON is nested too deeply.)")
    if isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DatabaseError) and "connection" in str(exc).lower()
    ):
        return ServiceUnavailable(
            "The service is temporarily unavailable; nothing was charged. Retry shortly.", headers={"Retry-After": "5"}
        )
    if isinstance(exc, drf.NotAuthenticated):
        return MissingAPIKey(NO_KEY_MESSAGE)
    if isinstance(exc, drf.AuthenticationFailed):
        return InvalidAPIKey(str(exc.detail))
    if isinstance(exc, drf.ParseError):
        return InvalidRequest(MALFORMED_JSON_MESSAGE)
    if isinstance(exc, drf.UnsupportedMediaType):
        return APIError(str(exc.detail), status_code=415, code="unsupported_media_type")
    if isinstance(exc, drf.MethodNotAllowed):
        return APIError(str(exc.detail), status_code=405, code="method_not_allowed")
    if isinstance(exc, (drf.NotFound, Http404)):
        return NotFound("The requested resource was not found.", code="not_found")
    if isinstance(exc, (drf.PermissionDenied, PermissionDenied)):
        return PermissionDeniedError("You do not have permission to perform this action.", code="permission_denied")
    if isinstance(exc, drf.Throttled):
        wait = int(exc.wait or 1)
        return RateLimited(str(exc.detail), headers={"Retry-After": str(max(1, wait))})
    if isinstance(exc, drf.ValidationError):
        param, message = _first_validation_error(exc.detail)
        code = "missing_required_parameter" if message == "This field is required." else "invalid_value"
        if code == "missing_required_parameter":
            message = f"Missing required parameter: '{param}'."
        return InvalidRequest(message, param=param, code=code)
    if isinstance(exc, drf.APIException):
        return APIError(str(exc.detail), status_code=exc.status_code, code=exc.default_code)
    return None


def error_headers(error: APIError) -> dict[str, str]:
    headers = dict(error.headers)
    if error.should_retry is not None:
        headers["x-should-retry"] = "true" if error.should_retry else "false"
    return headers


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error on the API leaves in the envelope."""
    error = _to_api_error(exc)
    if error is None:
        logger.exception("Unhandled error in %s", context.get("view").__class__.__name__)
        error = APIError(
            "The server had an error while processing your request.",
            status_code=500,
            type="server_error",
            code="internal_error",
        )
    from core.metrics import api_error_count

    api_error_count(status=error.status_code, code=error.code)  # 402s, 429s, moderation refusals...
    body = error.body()
    _absolute_top_up(body, context.get("request"))
    response = Response(body, status=error.status_code, headers=error_headers(error))
    if error.status_code == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def json_error_response(error: APIError) -> JsonResponse:
    """For plain Django views and handlers outside DRF."""
    response = JsonResponse(error.body(), status=error.status_code)
    for key, value in error_headers(error).items():
        response[key] = value
    return response
