"""Login lockout (django-axes) on both password forms (/admin/login/ only forwards to
the username form), password rules, and API keys that are never locked."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import Membership

PASSWORD = "plum-orbit-tandem-42"
LOGIN_PAGES = ["/dashboard/login/", "/accounts/login/"]


@pytest.fixture
def staff_owner(tenant) -> User:
    """Signs in on both forms (by username, by verified email): staff for the admin,
    owner for the dashboard."""
    from allauth.account.models import EmailAddress

    user = User.objects.create_user("olive", "olive@example.com", password=PASSWORD, is_staff=True)
    EmailAddress.objects.create(user=user, email="olive@example.com", verified=True, primary=True)
    Membership.objects.create(tenant=tenant.tenant, user=user, role=Membership.Role.OWNER)
    return user


def login(client: Client, page: str, password: str, address: str = "203.0.113.7"):
    if page == "/accounts/login/":
        return client.post(page, {"login": "olive@example.com", "password": password}, REMOTE_ADDR=address)
    return client.post(page, {"username": "olive", "password": password}, REMOTE_ADDR=address)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_five_wrong_passwords_lock_out_even_the_right_one(db, staff_owner, page, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    client = Client()
    statuses = [login(client, page, "wrong-password").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]  # the form again with its error; the fifth locks
    locked = login(client, page, PASSWORD)
    assert locked.status_code == 429 and not signed_in(client)
    assert "too many login attempts" in locked.content.decode().lower()
    # The lockout is per username and address: the owner elsewhere still signs in.
    elsewhere = Client()
    assert login(elsewhere, page, PASSWORD, address="198.51.100.9").status_code == 302 and signed_in(elsewhere)


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_fewer_failures_than_the_limit_do_not_lock(db, staff_owner, page):
    client = Client()
    for _ in range(4):
        login(client, page, "wrong-password")
    assert login(client, page, PASSWORD).status_code == 302 and signed_in(client)


def test_the_admin_address_checks_no_password_and_forwards_to_the_username_form(db, staff_owner):
    client = Client()
    for _ in range(6):
        forwarded = login(client, "/admin/login/", "wrong-password")
        assert forwarded.status_code == 302 and forwarded["Location"].startswith("/dashboard/login/")
    assert not signed_in(client)
    # Nothing was checked there, so nothing was counted: the right password still works.
    assert login(client, "/dashboard/login/", PASSWORD).status_code == 302 and signed_in(client)
    assert client.get("/admin/").status_code == 200


def test_lockout_on_the_username_form_holds_for_the_admin(db, staff_owner):
    client = Client()
    for _ in range(5):
        login(client, "/dashboard/login/", "wrong-password")
    assert login(client, "/dashboard/login/?next=/admin/", PASSWORD).status_code == 429 and not signed_in(client)
    assert client.get("/admin/").status_code == 302


def test_wrong_api_keys_never_lock_anything(api, registry, tenant):
    for _ in range(20):
        assert api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {tenant.raw}x").status_code == 401
    assert api.get("/v1/balance", **tenant.auth).status_code == 200


@pytest.mark.parametrize("password", ["1", "password123", "12345678901", "olive123"])
def test_member_create_refuses_weak_passwords(tenant, password):
    with pytest.raises(CommandError, match="password was refused"):
        call_command("member_create", tenant.tenant.name, "olive", "--password", password)
    assert not User.objects.filter(username="olive").exists()  # nothing half-created


def test_member_create_explains_a_short_password(tenant):
    with pytest.raises(CommandError) as refused:
        call_command("member_create", tenant.tenant.name, "olive", "--password", "1")
    assert "too short" in str(refused.value) and "at least 8 characters" in str(refused.value)


def test_member_create_keeps_the_old_password_when_the_new_one_is_refused(db, staff_owner, tenant):
    with pytest.raises(CommandError):
        call_command("member_create", tenant.tenant.name, "olive", "--password", "1")
    staff_owner.refresh_from_db()
    assert staff_owner.check_password(PASSWORD)


def test_member_create_sets_a_good_password_that_signs_in(tenant):
    call_command("member_create", tenant.tenant.name, "olive", "--password", PASSWORD, "--role", "owner")
    client = Client()
    assert client.post("/dashboard/login/", {"username": "olive", "password": PASSWORD}).status_code == 302


def test_member_create_refuses_an_impossible_username(tenant):
    with pytest.raises(CommandError, match="username"):
        call_command("member_create", tenant.tenant.name, "o" * 200, "--password", PASSWORD)
