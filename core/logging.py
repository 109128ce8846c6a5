"""Structured logs: one JSON object per line (LOG_FORMAT=json, the production default).

Every record, ours or a library's, goes through the standard `logging` module and is
rendered here by structlog's ProcessorFormatter, so nothing needs to change where code
logs. Context is carried in contextvars and added to every line it applies to:
`request_id` (core.middleware), `tenant` and `key_prefix` (the rate-limit throttle, once
the caller is known), `job_id` (the worker's message middleware below; `job_wait` on the
web tier). Bound per request or per message, cleared after it.

Never logged: an API key, a secret, a password, an Authorization header (values under
such names are replaced, and anything shaped like one of our keys is masked wherever it
appears), nor a prompt unless the operator sets LOG_PROMPTS=true.
"""

from __future__ import annotations

import re
from typing import Any

import dramatiq
import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, unbind_contextvars

REDACTED = "[redacted]"
# Keys whose values are never written (matched case-insensitively, as substrings).
_SECRET_NAMES = ("authorization", "api_key", "apikey", "secret", "password", "token", "credential", "cookie")
_PROMPT_NAMES = ("prompt", "negative_prompt", "revised_prompt")
# Our keys are "<prefix>.<secret>" (accounts.services); bearer values of any kind too.
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+")
_KEY_SHAPED = re.compile(r"\b([A-Za-z0-9]{6,16})\.([A-Za-z0-9_\-]{20,})\b")

# The fields the platform binds; log lines carry them only where they apply.
CONTEXT_FIELDS = ("request_id", "tenant", "key_prefix", "job_id")


def log_context_bind(**values: Any) -> None:
    """Add fields (request_id, tenant, key_prefix, job_id) to every later line of this
    request, message or thread; None values are left out."""
    bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def log_context_clear(*names: str) -> None:
    """Forget the named fields, or every field when none is named."""
    if names:
        unbind_contextvars(*names)
    else:
        clear_contextvars()


def scrub_text(text: str) -> str:
    """Mask bearer values and key-shaped strings (their prefix stays, for support)."""
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEY_SHAPED.sub(lambda m: f"{m.group(1)}.{REDACTED}", text)


def _log_prompts() -> bool:
    try:
        from django.conf import settings

        return bool(getattr(settings, "LOG_PROMPTS", False))
    except Exception:  # settings not configured (a bare script)
        return False


def redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: no secrets, no prompts (unless LOG_PROMPTS), anywhere in the line."""
    prompts = _log_prompts()
    for name in list(event):
        lowered = name.lower()
        if lowered in ("event", "exception") or lowered in CONTEXT_FIELDS:
            continue
        if any(s in lowered for s in _SECRET_NAMES) or (not prompts and lowered in _PROMPT_NAMES):
            event[name] = REDACTED
        elif isinstance(event[name], str):
            event[name] = scrub_text(event[name])
    for name in ("event", "exception"):
        if isinstance(event.get(name), str):
            event[name] = scrub_text(event[name])
    return event


def _drop_color_message(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event.pop("color_message", None)
    return event


class JSONFormatter(structlog.stdlib.ProcessorFormatter):
    """logging.Formatter for settings.LOGGING: `{"timestamp", "level", "logger", "event",
    request_id?, tenant?, key_prefix?, job_id?, "exception"?}` on one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pre_chain = [
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ]
        super().__init__(
            *args,
            foreign_pre_chain=pre_chain,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_color_message,
                structlog.processors.format_exc_info,
                redact,
                structlog.processors.JSONRenderer(sort_keys=False, default=str),
            ],
            **kwargs,
        )


class LogContextMiddleware(dramatiq.Middleware):
    """Dramatiq: every line logged while a message runs carries its job id (actors take
    `job_id` as their first argument or keyword) and message id."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        clear_contextvars()
        job_id = message.kwargs.get("job_id") if message.kwargs else None
        if job_id is None and message.args and message.actor_name == "run_generation":
            job_id = message.args[0]
        log_context_bind(job_id=str(job_id) if job_id else None, message_id=message.message_id)

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        clear_contextvars()

    after_skip_message = after_process_message
