"""Login throttling: django-axes' lockout check in front of Django's ModelBackend.

Covers every login form that authenticates with the HTTP request (/dashboard/login/,
where /admin/login/ sends staff, and allauth's /accounts/login/). API keys never pass
through `authenticate()` (they are checked by accounts.authentication), so a wrong key
can never lock anybody out. Its login records name the URL pattern, never the path.
"""

from __future__ import annotations

import re

from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from django.urls import Resolver404, resolve

_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


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


def login_record_path(request) -> str:
    """The URL pattern a login happened on (`/accounts/confirm-email/<key>/`), never the
    path itself: a path may carry a secret (an email-confirmation key signs in, and an
    invitation or reset link is one)."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return "<unknown>"
    # path() routes read "<str:key>"; re_path() ones get their named groups as "<key>".
    return "/" + _NAMED_GROUP.sub(r"<\1>", match.route.replace("^", "").replace("$", ""))


class LoginRecordHandler(AxesDatabaseHandler):
    """django-axes' database handler (lockouts, AccessLog rows, its log lines) with the
    request's path replaced by its URL pattern before anything is written."""

    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs):
        if request is not None:
            request.axes_path_info = login_record_path(request)
        return super().user_login_failed(sender, credentials, request, **kwargs)

    def user_logged_in(self, sender, request, user, **kwargs):
        request.axes_path_info = login_record_path(request)
        return super().user_logged_in(sender, request, user, **kwargs)

    def user_logged_out(self, sender, request, user, **kwargs):
        request.axes_path_info = login_record_path(request)
        return super().user_logged_out(sender, request, user, **kwargs)
