"""System checks (run by `manage.py check`, `check --deploy` and at start-up: `serve`,
`migrate`) for the authentication and email settings an operator can get wrong."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.checks import Warning as CheckWarning

LOG_EMAIL_BACKENDS = (
    "django.core.mail.backends.console.EmailBackend",
    "django.core.mail.backends.filebased.EmailBackend",
    "django.core.mail.backends.locmem.EmailBackend",
    "django.core.mail.backends.dummy.EmailBackend",
)


@register(Tags.security)
def email_delivery_check(app_configs, **kwargs) -> list[CheckWarning]:
    """accounts.W001: in production (DATABASE_URL set), email that goes nowhere but the
    server's output means verification, password-reset and invitation links (each one a
    way into an account) are written to the log, and nobody receives them."""
    if settings.EMBEDDED or settings.EMAIL_BACKEND not in LOG_EMAIL_BACKENDS:
        return []
    return [
        CheckWarning(
            "EMAIL_URL is not set: verification, password-reset and invitation emails, with "
            "their sign-in links, are written to the server's log instead of being sent.",
            hint="Set EMAIL_URL (e.g. smtp+tls://user:password@smtp.example.com:587); docs/configuration.md.",
            id="accounts.W001",
        )
    ]


@register(Tags.security)
def rate_limits_check(app_configs, **kwargs) -> list[Error | CheckWarning]:
    """accounts.E001: every ACCOUNT_RATE_LIMITS value parses (allauth would raise on the
    first request it meets otherwise). accounts.W002: login_failed is on; it is the only
    limit of the second-factor step, so without it TOTP codes can be guessed freely."""
    from allauth.account import app_settings as account_settings
    from allauth.core.internal.ratelimit import parse_rates

    messages: list[Error | CheckWarning] = []
    for action, rates in account_settings.RATE_LIMITS.items():
        try:
            parse_rates(rates)
        except (ValueError, TypeError, AttributeError):
            messages.append(
                Error(
                    f"ACCOUNT_RATE_LIMITS[{action!r}] = {rates!r} is not a rate.",
                    hint='allauth\'s format: "count/period/per" (period s, m, h or d; per ip, key or user), '
                    "comma-separated; null for none.",
                    id="accounts.E001",
                )
            )
    if not account_settings.RATE_LIMITS.get("login_failed"):
        messages.append(
            CheckWarning(
                "ACCOUNT_RATE_LIMITS['login_failed'] is off: two-factor codes can then be guessed without limit.",
                hint="Leave it at its default or give it a per-key limit.",
                id="accounts.W002",
            )
        )
    return messages
