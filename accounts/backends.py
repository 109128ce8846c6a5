"""Login throttling: django-axes' lockout check in front of Django's ModelBackend.

Covers every login form that authenticates with the HTTP request (/admin/login/,
/dashboard/login/). API keys never pass through `authenticate()` (they are checked by
accounts.authentication), so a wrong key can never lock anybody out.
"""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class LoginLockoutBackend(AxesStandaloneBackend):
    """Refuses logins of a username+address pair that failed AXES_FAILURE_LIMIT times
    within AXES_COOLOFF_TIME. A login without a request (the test client's `login()`,
    a shell) has no client address to count and is not throttled: only HTTP logins are."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def login_identity(request, credentials: dict | None) -> str:
    """django-axes' username for a login attempt: the username (admin, /dashboard/login/)
    or the email (allauth's /accounts/login/, whose form field is `login`), lower case,
    so one lockout covers a user whichever form is used."""
    credentials = credentials or {}
    post = getattr(request, "POST", {}) or {}
    value = credentials.get("username") or credentials.get("email") or post.get("username") or post.get("login") or ""
    return str(value).strip().lower()
