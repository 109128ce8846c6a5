"""billing.services.credits_hold, hold_capture and hold_release, service by service:
the boundaries (exactly the balance, exactly the key's budget, the month's first
microsecond) and idempotency per job. Against the real database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from accounts.models import APIKey
from accounts.services import api_key_create
from billing.errors import InsufficientCredits, KeyBudgetExceeded
from billing.models import CreditAccount, Hold, LedgerEntry
from billing.services import credits_hold, hold_capture, hold_release, key_month_spend
from images.models import ImageModel, Job


@pytest.fixture
def model(db) -> ImageModel:
    return ImageModel.objects.create(public_id="hold-model", profile="dall-e-2", source="demo-sd-tiny")


@pytest.fixture
def hold(model):
    """hold(tenant, amount, api_key=None) -> (job, Hold), as generation_submit takes it:
    inside the job's transaction, so a refusal leaves no job behind."""

    def take(tenant, amount: int, api_key: APIKey | None = None) -> tuple[Job, Hold]:
        with transaction.atomic():
            job = Job.objects.create(
                tenant=tenant,
                api_key=api_key,
                model=model,
                prompt="x",
                width=256,
                height=256,
                steps=4,
                guidance=5.0,
                seed=1,
                quote=amount,
                deadline=timezone.now() + timedelta(minutes=5),
            )
            return job, credits_hold(tenant=tenant, api_key=api_key, job=job, amount=amount)

    return take


def account(tenant) -> tuple[int, int]:
    row = CreditAccount.objects.get(tenant=tenant)
    return row.balance, row.held


def budget_key(tenant, limit: int) -> APIKey:
    key, _ = api_key_create(tenant=tenant, name=f"budget-{limit}", monthly_credit_limit=limit)
    return key


# -- balance ------------------------------------------------------------------


def test_hold_of_exactly_the_available_balance_succeeds(make_tenant, hold):
    tenant = make_tenant(credits=16).tenant
    _, taken = hold(tenant, 16)
    assert (taken.amount, taken.status) == (16, "open")
    assert account(tenant) == (16, 16)
    entry = LedgerEntry.objects.get(tenant=tenant, kind="hold")
    assert (entry.amount, entry.held_delta, entry.balance_after, entry.held_after) == (0, 16, 16, 16)


def test_hold_one_credit_above_the_balance_is_402_and_leaves_nothing(make_tenant, hold):
    tenant = make_tenant(credits=16).tenant
    with pytest.raises(InsufficientCredits) as refused:
        hold(tenant, 17)
    assert (refused.value.status_code, refused.value.code) == (402, "insufficient_quota")
    assert type(refused.value) is InsufficientCredits  # not the key-budget subclass
    assert account(tenant) == (16, 0)
    assert not Job.objects.filter(tenant=tenant).exists() and not Hold.objects.filter(tenant=tenant).exists()


def test_open_holds_count_against_the_available_balance(make_tenant, hold):
    tenant = make_tenant(credits=20).tenant
    hold(tenant, 12)
    with pytest.raises(InsufficientCredits):
        hold(tenant, 9)  # 20 - 12 = 8 available
    hold(tenant, 8)
    assert account(tenant) == (20, 20)
    with pytest.raises(InsufficientCredits):
        hold(tenant, 1)


def test_a_tenant_without_credits_is_refused(make_tenant, hold):
    tenant = make_tenant(credits=0).tenant
    with pytest.raises(InsufficientCredits):
        hold(tenant, 1)


# -- a key's monthly budget -----------------------------------------------------


def test_key_budget_allows_exactly_the_limit_and_refuses_one_credit_more(make_tenant, hold):
    tenant = make_tenant(credits=10_000).tenant
    key = budget_key(tenant, 20)
    hold(tenant, 12, key)
    hold(tenant, 8, key)  # spent + held + amount == limit
    with pytest.raises(KeyBudgetExceeded) as refused:
        hold(tenant, 1, key)
    assert (refused.value.status_code, refused.value.code) == (402, "key_budget_exceeded")
    assert account(tenant) == (10_000, 20)


def test_key_budget_counts_captured_and_open_holds_but_not_released_ones(make_tenant, hold):
    tenant = make_tenant(credits=10_000).tenant
    key = budget_key(tenant, 20)
    captured, _ = hold(tenant, 10, key)
    hold_capture(job=captured, charge=6)  # 6 spent, 4 given back
    released, _ = hold(tenant, 10, key)
    hold_release(job=released)  # nothing spent
    hold(tenant, 5, key)  # open
    assert key_month_spend(api_key=key) == 11
    hold(tenant, 9, key)  # 11 + 9 == 20
    with pytest.raises(KeyBudgetExceeded):
        hold(tenant, 1, key)


def test_key_budget_is_that_keys_only(make_tenant, hold):
    tenant = make_tenant(credits=10_000).tenant
    hold(tenant, 20, budget_key(tenant, 20))
    other = budget_key(tenant, 25)
    hold(tenant, 25, other)
    hold(tenant, 1000)  # a key without a limit, or no key at all
    with pytest.raises(KeyBudgetExceeded):
        hold(tenant, 1, other)


def test_key_budget_starts_afresh_on_the_first_microsecond_of_the_month(make_tenant, hold):
    tenant = make_tenant(credits=10_000).tenant
    key = budget_key(tenant, 20)
    month_start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month, _ = hold(tenant, 20, key)
    hold_capture(job=last_month, charge=20)
    Hold.objects.filter(job=last_month).update(created_at=month_start - timedelta(microseconds=1))
    this_month, _ = hold(tenant, 3, key)
    Hold.objects.filter(job=this_month).update(created_at=month_start)
    assert key_month_spend(api_key=key) == 3
    hold(tenant, 17, key)  # last month's 20 no longer count; 3 + 17 == 20
    with pytest.raises(KeyBudgetExceeded):
        hold(tenant, 1, key)


# -- capture and release ---------------------------------------------------------


def test_capture_charges_the_charge_and_frees_the_rest(make_tenant, hold):
    tenant = make_tenant(credits=100).tenant
    job, _ = hold(tenant, 40)
    settled = hold_capture(job=job, charge=25)
    assert (settled.status, settled.captured) == ("captured", 25)
    assert account(tenant) == (75, 0)
    entry = LedgerEntry.objects.get(job=job, kind="capture")
    assert (entry.amount, entry.held_delta, entry.balance_after, entry.held_after) == (-25, -40, 75, 0)


def test_capture_never_charges_more_than_the_hold(make_tenant, hold):
    tenant = make_tenant(credits=100).tenant
    job, _ = hold(tenant, 40)
    assert hold_capture(job=job, charge=90).captured == 40
    assert account(tenant) == (60, 0)


def test_capture_twice_charges_once(make_tenant, hold):
    tenant = make_tenant(credits=100).tenant
    job, _ = hold(tenant, 40)
    hold_capture(job=job, charge=40)
    again = hold_capture(job=job, charge=40)
    assert (again.status, again.captured) == ("captured", 40)
    assert account(tenant) == (60, 0)
    assert LedgerEntry.objects.filter(job=job, kind="capture").count() == 1


def test_release_frees_the_hold_once_and_charges_nothing(make_tenant, hold):
    tenant = make_tenant(credits=100).tenant
    job, _ = hold(tenant, 40)
    assert hold_release(job=job).status == "released"
    assert hold_release(job=job).status == "released"
    assert account(tenant) == (100, 0)
    assert LedgerEntry.objects.filter(job=job, kind="release").count() == 1


@pytest.mark.parametrize("first, then", [("capture", "release"), ("release", "capture")])
def test_a_settled_hold_is_never_settled_again(make_tenant, hold, first, then):
    tenant = make_tenant(credits=100).tenant
    job, _ = hold(tenant, 40)
    settle = {"capture": lambda: hold_capture(job=job, charge=40), "release": lambda: hold_release(job=job)}
    settle[first]()
    after_first = account(tenant)
    expected = Hold.Status.CAPTURED if first == "capture" else Hold.Status.RELEASED
    assert settle[then]().status == expected
    assert account(tenant) == after_first == ((60, 0) if first == "capture" else (100, 0))
    assert LedgerEntry.objects.filter(job=job).exclude(kind="hold").count() == 1


def test_settling_a_job_without_a_hold_is_a_no_op(make_tenant, model):
    tenant = make_tenant(credits=100).tenant
    job = Job.objects.create(
        tenant=tenant,
        model=model,
        prompt="x",
        width=256,
        height=256,
        steps=4,
        guidance=5.0,
        seed=1,
        deadline=timezone.now(),
    )
    assert hold_capture(job=job, charge=10) is None
    assert hold_release(job=job) is None
    assert account(tenant) == (100, 0)
