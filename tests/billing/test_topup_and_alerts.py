"""The 402 names where to top up; low-balance alerts send one email per crossing."""

from __future__ import annotations

import re
import time

import pytest
from django.core import mail

from accounts.models import Membership
from billing.alerts import balance_alert_set
from billing.models import BalanceAlert
from billing.services import credits_grant
from tests.conftest import post_json

GEN = {"model": "dall-e-2", "prompt": "a red fox", "size": "256x256", "response_format": "b64_json"}


def test_402_names_the_top_up_url_in_message_and_field(api, registry, make_tenant, settings):
    poor = make_tenant(credits=1)
    settings.VOUCHERS_ENABLED, settings.TOP_UP_URL = True, "/dashboard/billing/"
    response = post_json(api, "/v1/images/generations", GEN, poor)
    assert response.status_code == 402
    error = response.json()["error"]
    # the envelope's four, the 402's numbers (integer credits) and where to top up
    assert set(error) == {"message", "type", "param", "code", "required", "available", "held", "top_up_url"}
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert (error["required"], error["available"], error["held"]) == (16, 1, 0)
    assert error["top_up_url"] == "http://testserver/dashboard/billing/"
    assert error["message"].endswith("Add credits at http://testserver/dashboard/billing/")


def test_402_has_no_top_up_url_when_payments_and_vouchers_are_off(api, registry, make_tenant, settings):
    settings.TOP_UP_URL = ""
    response = post_json(api, "/v1/images/generations", GEN, make_tenant(credits=1))
    assert response.status_code == 402
    assert set(response.json()["error"]) == {"message", "type", "param", "code", "required", "available", "held"}


def _owner(tenant, email="olive@example.com"):
    from django.contrib.auth.models import User

    user = User.objects.create_user(email.split("@")[0], email, "pw-orbit-tandem-42")
    Membership.objects.create(tenant=tenant, user=user, role="owner")


def _wait_for_mail(count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(mail.outbox) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_low_balance_alert_emails_once_per_crossing_and_rearms(api, worker, make_tenant, settings):
    tenant = make_tenant(credits=100)  # dall-e-2 256x256 costs 16 credits
    _owner(tenant.tenant)
    balance_alert_set(tenant=tenant.tenant, threshold=60)
    statuses = [post_json(api, "/v1/images/generations", GEN, tenant).status_code for _ in range(5)]
    assert statuses == [200] * 5  # 100 -> 84 -> 68 -> 52 (below 60: one email) -> 36 -> 20
    _wait_for_mail(1)
    time.sleep(0.5)
    assert len(mail.outbox) == 1
    # The email states the balance when it is sent (the worker may have run more requests by then).
    left = int(re.search(r"Low balance: (\d+) credits left", mail.outbox[0].subject).group(1))
    assert left in (52, 36, 20) and mail.outbox[0].to == ["olive@example.com"]
    assert "/dashboard/billing/" in mail.outbox[0].body
    credits_grant(tenant=tenant.tenant, amount=100, note="top-up")  # 120: above again, re-armed
    assert BalanceAlert.objects.get(tenant=tenant.tenant).armed
    for _ in range(4):  # 120 -> 104 -> 88 -> 72 -> 56 (below again: a second email)
        assert post_json(api, "/v1/images/generations", GEN, tenant).status_code == 200
    _wait_for_mail(2)
    time.sleep(0.5)
    assert len(mail.outbox) == 2


def test_alert_actor_run_twice_sends_once(make_tenant):
    from billing.notifications import low_balance_email_send

    tenant = make_tenant(credits=100)
    _owner(tenant.tenant)
    balance_alert_set(tenant=tenant.tenant, threshold=500)
    from billing.alerts import balance_alert_check

    assert balance_alert_check(tenant_id=tenant.tenant.pk, available=100)
    stamp = BalanceAlert.objects.get(tenant=tenant.tenant).last_fired_at.isoformat()
    assert low_balance_email_send(tenant_id=tenant.tenant.pk, fired_at=stamp) == 1
    assert low_balance_email_send(tenant_id=tenant.tenant.pk, fired_at=stamp) == 0
    assert len(mail.outbox) == 1
    assert not balance_alert_check(tenant_id=tenant.tenant.pk, available=90)  # still below: no second email


@pytest.mark.parametrize("threshold", [-1, "10"])
def test_threshold_must_be_a_whole_number_of_credits(make_tenant, threshold):
    from billing.errors import InvalidAmount

    with pytest.raises(InvalidAmount):
        balance_alert_set(tenant=make_tenant().tenant, threshold=threshold)
