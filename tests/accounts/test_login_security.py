"""Every way into a session honours the same rules (issue 19, items 6, 7 and 11):
the second factor of an account with TOTP, a verified email for accounts that signed up,
and allauth's rate limits on every authentication step (the password's lockout stays
django-axes'). Driven through the real HTTP forms; TOTP codes are computed from the
stored secret with allauth's own helpers."""

from __future__ import annotations

import logging
import re

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
    yield_hotp_counters_from_time,
)
from django.contrib.auth.models import User
from django.core import mail
from django.core.checks import Warning as CheckWarning
from django.test import Client

from accounts.models import Membership

PASSWORD = "plum-orbit-tandem-42"
MFA_URL = "/accounts/2fa/authenticate/"
# Each login form with the fields it posts: the username form (also where /admin/login/
# sends people), allauth's email form, and the admin's own address.
LOGIN_FORMS = [
    ("/dashboard/login/", {"username": "root", "password": PASSWORD}),
    ("/accounts/login/", {"login": "root@example.com", "password": PASSWORD}),
    ("/admin/login/", {"username": "root", "password": PASSWORD}),
]


@pytest.fixture(autouse=True)
def _tolerant_totp(settings):
    # A code computed a moment before a 30 s boundary stays valid on the other side.
    settings.MFA_TOTP_TOLERANCE = 1


@pytest.fixture
def root(tenant):
    """A superuser who owns a tenant, with a verified email and TOTP on."""
    user = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    EmailAddress.objects.create(user=user, email="root@example.com", verified=True, primary=True)
    Membership.objects.create(tenant=tenant.tenant, user=user, role=Membership.Role.OWNER)
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    user.totp_secret = secret
    return user


def current_code(secret: str) -> str:
    counters = list(yield_hotp_counters_from_time())
    return format_hotp_value(hotp_value(secret, counters[len(counters) // 2]))


def wrong_code(secret: str) -> str:
    valid = {format_hotp_value(hotp_value(secret, c)) for c in yield_hotp_counters_from_time()}
    return next(code for code in (f"{n:06d}" for n in range(1000)) if code not in valid)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def password_step(client: Client, page: str, data: dict):
    """Posts the password form and follows where it sends the browser (the admin's
    login page forwards to the username form), until the second-factor step or a page."""
    response = client.post(page, data, REMOTE_ADDR="203.0.113.7")
    if response.status_code == 302 and response["Location"].startswith("/dashboard/login/"):
        username_form = {"username": data.get("username") or data["login"].split("@")[0], "password": data["password"]}
        response = client.post(response["Location"], username_form, REMOTE_ADDR="203.0.113.7")
    return response


@pytest.mark.parametrize(("page", "data"), LOGIN_FORMS)
def test_password_alone_never_opens_admin_or_dashboard_for_a_totp_superuser(root, page, data):
    client = Client()
    response = password_step(client, page, data)
    assert not signed_in(client)
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/accounts/tenant/").status_code == 302
    assert client.get("/dashboard/").status_code == 302
    # Where the password was right, the browser is at allauth's second-factor step.
    assert response.status_code == 302 and response["Location"].startswith(MFA_URL)


def test_admin_login_page_is_the_shared_login_flow(root):
    client = Client()
    posted = client.post("/admin/login/?next=/admin/", {"username": "root", "password": PASSWORD})
    assert posted.status_code == 302 and posted["Location"].startswith("/dashboard/login/")
    assert posted["Location"].endswith("?next=%2Fadmin%2F") and not signed_in(client)
    page = client.get("/admin/login/")
    assert page.status_code == 302 and page["Location"].startswith("/dashboard/login/")


@pytest.mark.parametrize(("page", "data"), LOGIN_FORMS)
def test_password_and_code_reach_the_admin(root, page, data):
    client = Client()
    password_step(client, page, data)
    done = client.post(MFA_URL, {"code": current_code(root.totp_secret)}, REMOTE_ADDR="203.0.113.7")
    assert done.status_code == 302 and signed_in(client)
    assert client.get("/admin/").status_code == 200
    assert client.get("/dashboard/").status_code == 200


def test_admin_next_survives_both_steps(root):
    client = Client()
    to_login = client.get("/admin/")
    assert to_login.status_code == 302
    forwarded = client.get(to_login["Location"])
    assert forwarded.status_code == 302 and forwarded["Location"].startswith("/dashboard/login/")
    staged = client.post(forwarded["Location"], {"username": "root", "password": PASSWORD})
    assert staged["Location"].startswith(MFA_URL)
    done = client.post(MFA_URL, {"code": current_code(root.totp_secret)})
    assert done.status_code == 302 and done["Location"] == "/admin/"


@pytest.mark.parametrize(("page", "data"), LOGIN_FORMS[:2])
def test_wrong_codes_lock_the_second_factor_even_for_the_right_code(root, page, data, settings):
    client = Client()
    password_step(client, page, data)
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit):
        refused = client.post(MFA_URL, {"code": wrong_code(root.totp_secret)}, REMOTE_ADDR="203.0.113.7")
        assert refused.status_code == 200 and not signed_in(client)
    locked = client.post(MFA_URL, {"code": current_code(root.totp_secret)}, REMOTE_ADDR="203.0.113.7")
    assert locked.status_code == 429 and not signed_in(client)
    # A fresh password from a fresh browser does not buy fresh guesses: the count is the user's.
    other = Client()
    password_step(other, page, data)
    again = other.post(MFA_URL, {"code": current_code(root.totp_secret)}, REMOTE_ADDR="198.51.100.9")
    assert again.status_code == 429 and not signed_in(other)


def test_recovery_codes_share_the_second_factor_limit(root, settings):
    codes = RecoveryCodes.activate(root).get_unused_codes()
    client = Client()
    password_step(client, *LOGIN_FORMS[0])
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert client.post(MFA_URL, {"code": "00000000"}).status_code == 200
    assert client.post(MFA_URL, {"code": codes[0]}).status_code == 429 and not signed_in(client)


def test_a_right_code_clears_the_count(root, settings):
    client = Client()
    password_step(client, *LOGIN_FORMS[0])
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post(MFA_URL, {"code": wrong_code(root.totp_secret)})
    assert client.post(MFA_URL, {"code": current_code(root.totp_secret)}).status_code == 302 and signed_in(client)


def test_second_factor_cannot_be_switched_off_by_turning_off_login_failed(settings):
    from django.core.checks import run_checks

    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "login_failed": None}
    ids = {m.id for m in run_checks()}
    assert "accounts.W002" in ids


def test_an_unparseable_rate_is_refused_at_start(settings):
    from django.core.checks import run_checks

    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "reset_password": "5 per minute"}
    errors = [m for m in run_checks() if m.id == "accounts.E001"]
    assert errors and "reset_password" in errors[0].msg


# ---- the email-verified rule on the username form ----


def test_unverified_sign_up_cannot_sign_in_on_the_username_form(db, settings):
    assert settings.ACCOUNT_EMAIL_VERIFICATION == "mandatory"
    settings.SIGNUP_MODE = "open"
    Client().post("/accounts/signup/", {"email": "kit@example.com", "password1": PASSWORD, "password2": PASSWORD})
    user = User.objects.get(email="kit@example.com")
    client = Client()
    response = client.post("/dashboard/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302 and "/accounts/confirm-email/" in response["Location"]
    assert not signed_in(client) and client.get("/dashboard/").status_code == 302


def test_operator_made_member_without_an_address_signs_in_with_the_password(tenant):
    user = User.objects.create_user("opal", password=PASSWORD)
    Membership.objects.create(tenant=tenant.tenant, user=user, role=Membership.Role.OWNER)
    client = Client()
    response = client.post("/dashboard/login/", {"username": "opal", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/dashboard/" and signed_in(client)


# ---- rate limits on the other authentication steps ----


def test_password_reset_requests_are_limited_per_address(root):
    client = Client()
    statuses = [client.post("/accounts/password/reset/", {"email": "root@example.com"}).status_code for _ in range(4)]
    assert statuses == [302, 302, 302, 429]
    assert len([m for m in mail.outbox if "root@example.com" in m.to]) == 3


def test_password_reset_key_page_is_limited(db, settings):
    client = Client()
    statuses = {
        client.post("/accounts/password/reset/key/1-set-password/", {"password1": "x", "password2": "x"}).status_code
        for _ in range(25)
    }
    assert 429 in statuses


def test_password_reset_never_signs_in_and_keeps_the_second_factor(root):
    client = Client()
    client.post("/accounts/password/reset/", {"email": "root@example.com"})
    path = re.search(r"http://testserver(/accounts/password/reset/key/\S+/)", mail.outbox[-1].body).group(1)
    form_page = client.get(path)
    target = form_page["Location"] if form_page.status_code == 302 else path
    new_password = "quartz-lantern-meadow-7"
    assert client.post(target, {"password1": new_password, "password2": new_password}).status_code == 302
    assert not signed_in(client) and client.get("/admin/").status_code == 302
    staged = client.post("/dashboard/login/", {"username": "root", "password": new_password})
    assert staged["Location"].startswith(MFA_URL) and not signed_in(client)


def test_confirmation_email_resends_are_limited(db, settings):
    settings.SIGNUP_MODE = "open"
    Client().post("/accounts/signup/", {"email": "lou@example.com", "password1": PASSWORD, "password2": PASSWORD})
    assert len([m for m in mail.outbox if "lou@example.com" in m.to]) == 1
    for _ in range(5):  # each sign-in attempt of an unverified account would send one more
        Client().post("/accounts/login/", {"login": "lou@example.com", "password": PASSWORD})
        Client().post("/dashboard/login/", {"username": "lou", "password": PASSWORD})
    assert len([m for m in mail.outbox if "lou@example.com" in m.to]) == 1


def test_username_form_posts_are_limited_per_address(db, settings):
    assert settings.ACCOUNT_RATE_LIMITS["login"] == "30/m/ip"
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "login": "3/m/ip"}  # fewer slow hashes
    client = Client()
    statuses = [
        client.post("/dashboard/login/", {"username": f"nobody{n}", "password": "x"}).status_code for n in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


# ---- secrets in login records ----


def test_login_records_never_carry_the_confirmation_key(db, settings, caplog):
    from axes.models import AccessLog

    settings.SIGNUP_MODE = "open"
    caplog.set_level(logging.DEBUG)
    client = Client()
    client.post("/accounts/signup/", {"email": "mo@example.com", "password1": PASSWORD, "password2": PASSWORD})
    path = re.search(r"http://testserver(/accounts/confirm-email/([^/\s]+)/)", mail.outbox[-1].body)
    key = path.group(2)
    caplog.clear()
    assert client.post(path.group(1)).status_code == 302 and signed_in(client)  # signed in by the confirmation
    assert any("AXES" in r.getMessage() for r in caplog.records)  # axes did record the login
    assert key not in caplog.text
    assert not AccessLog.objects.filter(path_info__contains=key).exists()
    assert AccessLog.objects.filter(path_info="/accounts/confirm-email/<key>/").exists()


# ---- email in production ----


def test_production_without_email_url_warns(settings):
    from accounts.checks import email_delivery_check

    settings.EMBEDDED = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    warnings = email_delivery_check(None)
    assert [w.id for w in warnings] == ["accounts.W001"] and isinstance(warnings[0], CheckWarning)
    assert "EMAIL_URL" in warnings[0].msg
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    assert email_delivery_check(None) == []
    settings.EMBEDDED = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    assert email_delivery_check(None) == []


def test_production_start_without_email_url_prints_the_warning(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SECRET_KEY": "x" * 50,
        "WARM_UP_MODELS": "false",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert "accounts.W001" in result.stderr + result.stdout, result.stderr
    env["EMAIL_URL"] = "smtp://mail.example.com:25"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert "accounts.W001" not in result.stderr + result.stdout
