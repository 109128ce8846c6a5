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


def sign_up(client: Client, email: str, **extra):
    return client.post("/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": PASSWORD}, **extra)


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
    # The username form hands the right password to allauth's second-factor step too.
    staged = client.post("/dashboard/login/", {"username": "jo", "password": PASSWORD})
    assert staged.status_code == 302 and "/accounts/2fa/authenticate/" in staged["Location"]
    assert "_auth_user_id" not in client.session
    client = Client()
    staged = client.post("/accounts/login/", {"login": "jo@example.com", "password": PASSWORD})
    assert staged.status_code == 302 and "/accounts/2fa/authenticate/" in staged["Location"]
    assert "_auth_user_id" not in client.session


# ---- Issue 19: invitations bound to their link and address; one trial per mailbox ----


def _owner_invites(tenant, email: str, role: str = "owner") -> Invitation:
    """An owner of `tenant` invites `email` from the dashboard; returns the invitation."""
    owner = User.objects.create_user(f"owner-{User.objects.count()}", None, PASSWORD)
    Membership.objects.create(tenant=tenant, user=owner, role="owner")
    dashboard = Client()
    dashboard.force_login(owner)
    assert dashboard.post("/dashboard/members/", {"email": email, "role": role}).status_code == 302
    return Invitation.objects.filter(tenant=tenant).latest("id")


def test_a_strangers_own_sign_up_never_lands_in_a_tenant_that_invited_their_address(
    tenant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        invitation = _owner_invites(tenant.tenant, "Victim@Example.com", role="owner")
    victim = Client()  # never followed the link
    assert sign_up(victim, "victim@example.com").status_code == 302
    verify_from_outbox(victim, "victim@example.com")
    membership = Membership.objects.get(user__email="victim@example.com")
    assert membership.tenant != tenant.tenant and membership.role == "owner"
    assert CreditAccount.objects.get(tenant=membership.tenant).balance == 750  # their own trial
    assert not Membership.objects.filter(tenant=tenant.tenant, user__email="victim@example.com").exists()
    invitation.refresh_from_db()
    assert invitation.accepted_at is None  # still open: only its link accepts it


def test_invite_mode_the_link_followed_decides_not_the_newest_invitation(
    tenant, settings, django_capture_on_commit_callbacks
):
    from accounts.services import invitation_create

    settings.SIGNUP_MODE = "invite"
    _, operator_token = invitation_create(email="gil@example.com", tenant=None, invited_by="operator")
    with django_capture_on_commit_callbacks(execute=True):
        _owner_invites(tenant.tenant, "gil@example.com", role="owner")  # newer, from another tenant
    client = Client()
    assert client.get(f"/dashboard/invite/{operator_token}/").status_code == 302
    assert sign_up(client, "gil@example.com").status_code == 302
    verify_from_outbox(Client(), "gil@example.com")  # verified in another browser: still bound
    membership = Membership.objects.get(user__email="gil@example.com")
    assert membership.tenant != tenant.tenant and membership.role == "owner"
    assert CreditAccount.objects.get(tenant=membership.tenant).balance == 750
    operator, owners = Invitation.objects.filter(tenant=None).get(), Invitation.objects.get(tenant=tenant.tenant)
    assert operator.accepted_by.email == "gil@example.com" and owners.accepted_at is None


def test_an_invitation_link_is_only_accepted_with_the_invited_address(tenant, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        invitation = _owner_invites(tenant.tenant, "fay@example.com", role="admin")
    from accounts.services import invitation_create

    _, token = invitation_create(email="fay@example.com", tenant=tenant.tenant, role="admin")
    someone = Client()  # got the forwarded link; open mode lets them sign up as themselves
    someone.get(f"/dashboard/invite/{token}/")
    assert sign_up(someone, "mallory@example.com").status_code == 302
    verify_from_outbox(someone, "mallory@example.com")
    mallory = Membership.objects.get(user__email="mallory@example.com")
    assert mallory.tenant != tenant.tenant  # their own tenant, not the invited one
    assert not Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=False).exists()
    assert Invitation.objects.filter(accepted_at__isnull=False).count() == 0


@pytest.mark.parametrize(
    "address",
    ["fay@example.com\r\nBcc: all@example.com", "fay@example.com\nX: y", "not an address", "a@b@example.com"],
)
def test_an_invitation_to_a_malformed_address_is_a_400_and_sends_nothing(
    tenant, address, django_capture_on_commit_callbacks
):
    owner = User.objects.create_user("olive", "olive@example.com", PASSWORD)
    Membership.objects.create(tenant=tenant.tenant, user=owner, role="owner")
    dashboard = Client()
    dashboard.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = dashboard.post("/dashboard/members/", {"email": address, "role": "member"})
    assert response.status_code == 400 and "valid email address" in response.content.decode()
    assert not Invitation.objects.exists() and not mail.outbox


def test_mailbox_key_folds_case_tags_and_ignored_dots():
    from accounts.services import mailbox_key

    assert {mailbox_key(email=e) for e in ("sam+1@example.com", "SAM+3@EXAMPLE.com", "Sam@example.com")} == {
        "sam@example.com"
    }
    assert {mailbox_key(email=e) for e in ("s.a.m+x@gmail.com", "SAM@googlemail.com", "sa.m@GMail.com")} == {
        "sam@gmail.com"
    }
    assert mailbox_key(email="s.am@example.com") != mailbox_key(email="sam@example.com")  # dots matter elsewhere


def test_mailbox_key_folds_quoted_local_parts_and_international_domains():
    """Other spellings of one mailbox that Django's validator (so the sign-up form)
    accepts: a quoted local part (RFC 5321: "sam"@ is sam@), a domain in Unicode or in
    its ASCII (IDNA) form, full-width letters (which IDNA maps to ASCII)."""
    from accounts.services import mailbox_key

    assert {
        mailbox_key(email=e)
        for e in ('"sam"@example.com', '"sam+1"@example.com', '"SAM"@Example.com', "sam@ＥＸＡＭＰＬＥ.com")
    } == {"sam@example.com"}
    assert {mailbox_key(email=e) for e in ("sam@exämple.com", "sam@xn--exmple-cua.com", "SAM+2@EXÄMPLE.com")} == {
        "sam@xn--exmple-cua.com"
    }
    assert mailbox_key(email='"s.am"@gmail.com') == "sam@gmail.com"
    assert mailbox_key(email="s.am@exämple.com") != mailbox_key(email="sam@exämple.com")  # dots still matter


def test_one_trial_per_mailbox_whatever_the_tags_case_or_gmail_dots(db, settings):
    for email in (
        "sam+1@example.com",
        "sam+2@example.com",
        "SAM+3@EXAMPLE.com",
        "s.a.m@gmail.com",
        "sam@googlemail.com",
    ):
        client = Client()
        assert sign_up(client, email).status_code == 302
        verify_from_outbox(client, email)
    tenants = Tenant.objects.order_by("id")
    balances = [CreditAccount.objects.filter(tenant=t).values_list("balance", flat=True).first() or 0 for t in tenants]
    assert len(balances) == 5  # everyone gets a tenant...
    assert balances == [750, 0, 0, 750, 0]  # ...but one trial per mailbox
    assert LedgerEntry.objects.filter(note="trial").count() == 2
    assert ledger_reconcile() == []


def test_one_trial_per_mailbox_whatever_its_quoting_or_domain_spelling(db, settings):
    for email in ("sam@exämple.com", '"sam"@xn--exmple-cua.com', "SAM+1@ＥＸÄＭＰＬＥ.com"):
        client = Client()
        assert sign_up(client, email).status_code == 302
        verify_from_outbox(client, email)
    tenants = Tenant.objects.order_by("id")
    balances = [CreditAccount.objects.filter(tenant=t).values_list("balance", flat=True).first() or 0 for t in tenants]
    assert len(balances) == 3 and sorted(balances) == [0, 0, settings.SIGNUP_TRIAL_CREDITS]
    assert ledger_reconcile() == []


def test_sign_ups_are_limited_per_address_and_per_network(db, settings):
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "signup": "2/h/ip", "signup_network": "3/h/key"}
    statuses = [sign_up(Client(), f"n{i}@example.com", REMOTE_ADDR="198.51.100.7").status_code for i in range(3)]
    assert statuses == [302, 302, 429]
    # Another address of the same /24: its own address limit, but the network's is shared.
    assert sign_up(Client(), "n3@example.com", REMOTE_ADDR="198.51.100.8").status_code == 302
    assert sign_up(Client(), "n4@example.com", REMOTE_ADDR="198.51.100.9").status_code == 429
    assert sign_up(Client(), "n5@example.com", REMOTE_ADDR="203.0.113.5").status_code == 302  # elsewhere
    assert not User.objects.filter(email__in=["n2@example.com", "n4@example.com"]).exists()


def test_sign_up_limits_use_the_forwarded_address_only_behind_trusted_proxies(db, settings):
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "signup": "1/h/ip", "signup_network": None}
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    settings.TRUSTED_PROXY_COUNT = 1
    assert sign_up(Client(), "p1@example.com", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.7", **proxy).status_code == 302
    # A different client behind the same proxy is not limited; a forged left entry changes nothing.
    assert sign_up(Client(), "p2@example.com", HTTP_X_FORWARDED_FOR="203.0.113.9", **proxy).status_code == 302
    assert sign_up(Client(), "p3@example.com", HTTP_X_FORWARDED_FOR="9.9.9.9, 198.51.100.7", **proxy).status_code == 429
    # Trusting no proxy: the header is ignored, the connection's address counts.
    settings.TRUSTED_PROXY_COUNT = 0
    assert sign_up(Client(), "p4@example.com", HTTP_X_FORWARDED_FOR="192.0.2.1", **proxy).status_code == 302
    assert sign_up(Client(), "p5@example.com", HTTP_X_FORWARDED_FOR="192.0.2.2", **proxy).status_code == 429


def test_signup_limit_settings_reach_allauth(settings):
    assert settings.ACCOUNT_RATE_LIMITS["signup"] == f"{settings.SIGNUP_RATE_LIMIT_PER_ADDRESS}/ip"
    assert settings.ACCOUNT_RATE_LIMITS["signup_network"] == f"{settings.SIGNUP_RATE_LIMIT_PER_NETWORK}/key"
