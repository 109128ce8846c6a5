"""Self-service sign-up with django-allauth: email verification creates a tenant with
trial credits (once), SIGNUP_MODE open/invite/closed, invitations, password reset,
django-axes on allauth's login, and TOTP never bypassed by the username form."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from accounts.models import Invitation, Membership, Tenant
from billing.models import CreditAccount, LedgerEntry
from billing.selectors import ledger_reconcile

PASSWORD = "plum-orbit-tandem-42"
LINK = re.compile(r"http://testserver(/accounts/confirm-email/[^/\s]+/)")


def sign_up(client: Client, email: str):
    return client.post("/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": PASSWORD})


def verify_from_outbox(client: Client, email: str):
    message = [m for m in mail.outbox if email.lower() in [t.lower() for t in m.to]][-1]
    path = LINK.search(message.body).group(1)
    return client.post(path)


@pytest.fixture(autouse=True)
def _open(settings):
    settings.SIGNUP_MODE = "open"
    settings.SIGNUP_TRIAL_CREDITS = 750
    settings.SIGNUP_MODERATION_LEVEL = "strict"
    settings.SIGNUP_RPM_LIMIT = 42


def test_verified_sign_up_gets_a_tenant_with_trial_credits_once(db):
    client = Client()
    assert sign_up(client, "Ada@Example.com").status_code == 302
    user = User.objects.get(email__iexact="ada@example.com")
    assert not Membership.objects.filter(user=user).exists()  # nothing before verification
    assert verify_from_outbox(client, "Ada@Example.com").status_code == 302
    membership = Membership.objects.get(user=user)
    tenant = membership.tenant
    assert membership.role == "owner"
    assert (tenant.moderation_level, tenant.rpm_limit) == ("strict", 42)
    assert CreditAccount.objects.get(tenant=tenant).balance == 750
    entry = LedgerEntry.objects.get(tenant=tenant)
    assert (entry.kind, entry.amount, entry.note, entry.actor) == ("grant", 750, "trial", "signup")
    assert entry.idempotency_key == f"trial:user:{user.pk}"
    # A second confirmation (the link used twice) creates nothing more.
    verify_from_outbox(Client(), "Ada@Example.com")
    assert Tenant.objects.count() == 1 and LedgerEntry.objects.count() == 1
    # Signed in by the confirmation; the dashboard shows the trial balance.
    assert 'id="available">750<' in client.get("/dashboard/").content.decode()
    assert ledger_reconcile() == []


def test_unverified_account_cannot_sign_in(db):
    sign_up(Client(), "bob@example.com")
    client = Client()
    response = client.post("/accounts/login/", {"login": "bob@example.com", "password": PASSWORD})
    assert response.status_code == 302 and "/accounts/confirm-email/" in response["Location"]
    assert client.get("/dashboard/").status_code == 302  # still signed out
    assert not Tenant.objects.exists()


def test_email_login_after_verification_reaches_the_dashboard(db):
    sign_up(Client(), "cy@example.com")
    verify_from_outbox(Client(), "cy@example.com")
    client = Client()
    response = client.post("/accounts/login/", {"login": "cy@example.com", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200


def test_closed_sign_up_creates_nobody(db, settings):
    settings.SIGNUP_MODE = "closed"
    client = Client()
    page = client.get("/accounts/signup/")
    assert "closed" in page.content.decode().lower()
    sign_up(client, "dee@example.com")
    assert not User.objects.filter(email="dee@example.com").exists()


def test_invite_mode_lets_in_only_people_an_owner_invited(tenant, settings, django_capture_on_commit_callbacks):
    settings.SIGNUP_MODE = "invite"
    owner = User.objects.create_user("olive", "olive@example.com", PASSWORD)
    Membership.objects.create(tenant=tenant.tenant, user=owner, role="owner")
    stranger = Client()
    sign_up(stranger, "eve@example.com")
    assert not User.objects.filter(email="eve@example.com").exists()

    dashboard = Client()
    dashboard.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):  # the invitation is emailed after commit
        response = dashboard.post("/dashboard/members/", {"email": "fay@example.com", "role": "admin"})
    assert response.status_code == 302
    invitation_mail = [m for m in mail.outbox if "fay@example.com" in m.to][-1]
    link = re.search(r"http://testserver(/dashboard/invite/\S+/)", invitation_mail.body).group(1)
    invited = Client()
    assert invited.get(link).status_code == 302
    assert sign_up(invited, "other@example.com").status_code == 200  # not the invited address: refused
    assert sign_up(invited, "fay@example.com").status_code == 302
    verify_from_outbox(invited, "fay@example.com")
    fay = User.objects.get(email="fay@example.com")
    membership = Membership.objects.get(user=fay)
    assert (membership.tenant_id, membership.role) == (tenant.tenant.pk, "admin")
    assert Tenant.objects.count() == 1  # no tenant of her own, no trial credits
    assert Invitation.objects.get().accepted_by == fay
    assert invited.get(link).status_code == 404  # used


def test_operator_invitation_gives_a_tenant_of_ones_own(db, settings):
    from accounts.services import invitation_create

    settings.SIGNUP_MODE = "invite"
    _, token = invitation_create(
        email="gil@example.com", tenant=None, invited_by="operator", base_url="http://testserver"
    )
    client = Client()
    client.get(f"/dashboard/invite/{token}/")
    sign_up(client, "gil@example.com")
    verify_from_outbox(client, "gil@example.com")
    membership = Membership.objects.get(user__email="gil@example.com")
    assert membership.role == "owner" and CreditAccount.objects.get(tenant=membership.tenant).balance == 750


def test_password_reset_by_email(db):
    sign_up(Client(), "hal@example.com")
    verify_from_outbox(Client(), "hal@example.com")
    client = Client()
    assert client.post("/accounts/password/reset/", {"email": "hal@example.com"}).status_code == 302
    path = re.search(r"http://testserver(/accounts/password/reset/key/\S+/)", mail.outbox[-1].body).group(1)
    form_page = client.get(path)
    new_password = "quartz-lantern-meadow-7"
    target = form_page["Location"] if form_page.status_code == 302 else path
    assert client.post(target, {"password1": new_password, "password2": new_password}).status_code == 302
    assert User.objects.get(email="hal@example.com").check_password(new_password)


def test_allauth_login_is_locked_out_by_axes(db):
    sign_up(Client(), "ivy@example.com")
    verify_from_outbox(Client(), "ivy@example.com")
    client = Client()
    statuses = [
        client.post(
            "/accounts/login/", {"login": "ivy@example.com", "password": "wrong-password"}, REMOTE_ADDR="203.0.113.9"
        ).status_code
        for _ in range(5)
    ]
    assert statuses[-1] == 429 and statuses[:4] == [200] * 4
    locked = client.post(
        "/accounts/login/", {"login": "ivy@example.com", "password": PASSWORD}, REMOTE_ADDR="203.0.113.9"
    )
    assert locked.status_code == 429 and "_auth_user_id" not in client.session


def test_totp_user_cannot_bypass_the_second_factor_on_the_username_form(tenant):
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

    user = User.objects.create_user("jo", "jo@example.com", PASSWORD)
    Membership.objects.create(tenant=tenant.tenant, user=user, role="owner")
    from allauth.account.models import EmailAddress

    EmailAddress.objects.create(user=user, email="jo@example.com", verified=True, primary=True)
    TOTP.activate(user, generate_totp_secret())
    client = Client()
    refused = client.post("/dashboard/login/", {"username": "jo", "password": PASSWORD})
    assert refused.status_code == 200 and "two-factor" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    staged = client.post("/accounts/login/", {"login": "jo@example.com", "password": PASSWORD})
    assert staged.status_code == 302 and "/accounts/2fa/authenticate/" in staged["Location"]
    assert "_auth_user_id" not in client.session
