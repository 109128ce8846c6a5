"""A key's monthly budget and rpm are ceilings for its whole subtree: the keys it
created (and theirs) spend and count against it too (issue 19 item 4). One rule,
`billing.services.key_budget_check`, on every path; checked root first under row locks
so concurrent children cannot overspend (run this file on PostgreSQL + Redis as well)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import APIKey
from accounts.services import api_key_create
from billing.models import Hold
from billing.services import key_month_spend

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256"}  # 16 credits
PRICE = 16


def bearer(raw: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def submit(raw: str, client: APIClient | None = None):
    """One charged request, answered at once (202) so its hold stays open."""
    return (client or APIClient()).post(URL, SMALL, format="json", HTTP_PREFER="respond-async", **bearer(raw))


def children(api, admin_raw: str, count: int, **limits) -> list[str]:
    raws = []
    for i in range(count):
        created = api.post("/v1/keys", {"name": f"child-{i}", **limits}, format="json", **bearer(admin_raw))
        assert created.status_code == 201, created.content
        raws.append(created.json()["key"])
    return raws


@pytest.fixture
def budgeted_admin(parked, tenant) -> tuple[APIKey, str]:
    """The issue's admin key: `--monthly-credits 32` (two images)."""
    return api_key_create(tenant=tenant.tenant, name="admin", is_admin=True, monthly_credit_limit=2 * PRICE)


def spent_by_tree(tenant) -> int:
    return sum(h.amount for h in Hold.objects.filter(tenant=tenant.tenant, status="open"))


def test_children_with_the_parents_cap_cannot_spend_more_than_the_parent_allows(api, tenant, budgeted_admin):
    admin, admin_raw = budgeted_admin
    first, second = children(api, admin_raw, 2, monthly_credit_limit=2 * PRICE)
    answers = [submit(raw).status_code for raw in (admin_raw, admin_raw, first, first, second, second)]
    assert answers == [202, 202, 402, 402, 402, 402]
    assert spent_by_tree(tenant) == 2 * PRICE  # not 96
    assert key_month_spend(api_key=admin) == 2 * PRICE


def test_the_402_for_an_ancestors_budget_names_that_key_and_its_numbers(api, tenant, budgeted_admin):
    admin, admin_raw = budgeted_admin
    (child,) = children(api, admin_raw, 1, monthly_credit_limit=2 * PRICE)
    assert submit(child).status_code == 202
    assert submit(admin_raw).status_code == 202
    refused = submit(child)
    assert refused.status_code == 402 and refused.headers.get("x-should-retry") != "true"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "key_budget_exceeded")
    assert admin.prefix in error["message"] and "created this key" in error["message"]
    assert (error["budget_key"], error["limit"], error["spent"]) == (admin.prefix, 2 * PRICE, 2 * PRICE)
    assert "top_up_url" not in error  # buying credits does not lift a key's budget


def test_own_budget_refusal_names_the_key_itself(api, tenant, budgeted_admin):
    admin, admin_raw = budgeted_admin
    (child,) = children(api, admin_raw, 1, monthly_credit_limit=PRICE)
    child_key = APIKey.objects.get(prefix=child.split(".")[0])
    assert submit(child).status_code == 202
    error = submit(child).json()["error"]
    assert error["code"] == "key_budget_exceeded" and error["budget_key"] == child_key.prefix
    assert error["message"].startswith("This API key's monthly budget of 16 credits is used up")


def test_a_used_up_ancestor_budget_is_refused_before_moderation_runs(api, tenant, budgeted_admin):
    """generation_create's pre-check (step 2, before moderation, pricing and any fetch)
    is the same rule as the hold's: a child whose parent's budget is gone is a 402 at
    once, and its prompt is never moderated or recorded."""
    from images.models import BlockedPrompt

    _, admin_raw = budgeted_admin
    (child,) = children(api, admin_raw, 1)
    assert [submit(admin_raw).status_code for _ in range(2)] == [202, 202]
    blocked = {**SMALL, "prompt": "explicit porn of two people having sex"}
    refused = api.post(URL, blocked, format="json", **bearer(child))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "key_budget_exceeded"
    assert refused.json()["error"]["required"] is None  # refused before it was priced
    assert not BlockedPrompt.objects.exists()


def test_lowering_a_parents_budget_binds_the_children_it_already_made(api, tenant, budgeted_admin):
    admin, admin_raw = budgeted_admin
    (child,) = children(api, admin_raw, 1)
    APIKey.objects.filter(pk=admin.pk).update(monthly_credit_limit=PRICE)  # the owner, in the admin
    assert [submit(child).status_code for _ in range(2)] == [202, 402]


def test_a_child_asking_for_more_than_its_parent_is_refused_naming_the_field(api, tenant, parked):
    _, admin_raw = api_key_create(
        tenant=tenant.tenant, name="admin", is_admin=True, monthly_credit_limit=2 * PRICE, rpm_limit=5
    )
    for field, value in (("monthly_credit_limit", 2 * PRICE + 1), ("rpm_limit", 6)):
        refused = api.post("/v1/keys", {field: value}, format="json", **bearer(admin_raw))
        assert refused.status_code == 403, refused.content
        assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == ("key_scope_exceeded", field)


# -- rpm ------------------------------------------------------------------------------


def test_a_parents_rpm_bounds_the_combined_rate_of_its_children(api, tenant, parked):
    admin, admin_raw = api_key_create(tenant=tenant.tenant, name="admin", is_admin=True, rpm_limit=3)
    first, second = children(api, admin_raw, 2)  # each inherits 3 rpm
    # Creating the two keys counted 2 of the admin's 3 requests this minute.
    assert submit(first).status_code == 202
    refused = submit(second)
    assert refused.status_code == 429
    assert admin.prefix in refused.json()["error"]["message"]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and refused["Retry-After"]


def test_the_installation_default_rpm_of_a_parent_binds_its_children(api, tenant, parked, settings):
    settings.DEFAULT_KEY_RPM = 2
    _, admin_raw = api_key_create(tenant=tenant.tenant, name="admin", is_admin=True)
    (child,) = children(api, admin_raw, 1)  # the admin's first request this minute
    assert submit(child).status_code == 202
    assert submit(child).status_code == 429


def test_a_keys_rate_headers_show_the_tightest_of_its_own_and_its_parents(api, tenant, parked):
    _, admin_raw = api_key_create(tenant=tenant.tenant, name="admin", is_admin=True, rpm_limit=3)
    (child,) = children(api, admin_raw, 1)  # inherits 3 rpm; the parent has used 1 of its 3
    answer = submit(child)
    assert answer.status_code == 202
    # The child has used 1 of 3, the parent 2 of 3 (the POST /v1/keys and this one).
    assert answer["x-ratelimit-remaining-requests"] == "1"
    assert submit(child)["x-ratelimit-remaining-requests"] == "0"


# -- concurrency (PostgreSQL: real row locks) ----------------------------------------------


def test_concurrent_children_of_one_budgeted_parent_never_overspend(
    api, transactional_db, parked, make_tenant, settings
):
    """Three children (each allowed the parent's whole budget) and the parent itself,
    twelve requests at once: exactly the parent's budget is held, never a credit more.
    No in-flight cap, whose account lock would serialise the tenant's submissions and
    hide a missing key lock."""
    settings.DEFAULT_MAX_CONCURRENT_JOBS = 0
    tenant = make_tenant(credits=10_000)
    images = 3
    admin, admin_raw = api_key_create(
        tenant=tenant.tenant, name="admin", is_admin=True, monthly_credit_limit=images * PRICE
    )
    raws = [admin_raw, *children(api, admin_raw, 3)]
    statuses: list[int] = []
    codes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def call(raw: str) -> None:
        try:
            client = APIClient()
            start.wait(timeout=30)
            response = submit(raw, client)
            with lock:
                statuses.append(response.status_code)
                if response.status_code != 202:
                    codes.append(response.json()["error"]["code"])
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(raw,)) for raw in raws for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(statuses) == [202] * images + [402] * (12 - images)
    assert set(codes) == {"key_budget_exceeded"}
    assert spent_by_tree(tenant) == images * PRICE
    assert key_month_spend(api_key=admin) == images * PRICE
