from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from billing.models import CreditAccount, LedgerEntry
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}


def test_credits_grant_adds_and_removes_through_the_ledger(tenant, capsys):
    call_command("credits_grant", tenant.tenant.name, "500", "--note", "invoice 7")
    assert "balance 10500" in capsys.readouterr().out
    call_command("credits_grant", tenant.tenant.name, "-200")
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == 10_300
    entries = list(
        LedgerEntry.objects.filter(tenant=tenant.tenant).order_by("id").values_list("kind", "amount", "balance_after")
    )
    assert entries[-2:] == [("grant", 500, 10_500), ("adjustment", -200, 10_300)]


@pytest.mark.parametrize("amount", ["0", "abc", "1.5", "-999999", "99999999999999"])
def test_credits_grant_refuses_bad_amounts(tenant, amount):
    with pytest.raises(CommandError):
        call_command("credits_grant", tenant.tenant.name, amount)
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == 10_000


def test_credits_grant_unknown_tenant(db):
    with pytest.raises(CommandError):
        call_command("credits_grant", "nobody", "5")


def test_tenant_create_with_negative_credits_is_refused(db):
    with pytest.raises(CommandError):
        call_command("tenant_create", "neg", "--credits", "-5")


def test_balance_endpoint(api, registry, tenant):
    body = api.get("/v1/balance", **tenant.auth).json()
    assert body == {"object": "balance", "balance": 10_000, "held": 0, "available": 10_000, "currency": "credits"}


def test_usage_groups_and_csv(api, worker, make_tenant):
    tenant = make_tenant(credits=40)
    for _ in range(3):  # two succeed, the third is refused (402)
        post_json(api, URL, SMALL, tenant)
    by_day = api.get("/v1/usage", **tenant.auth).json()
    totals = {k: by_day["totals"][k] for k in ("requests", "images", "pixels", "credits", "cancelled", "pending")}
    assert totals == {"requests": 3, "images": 2, "pixels": 2 * 256 * 256, "credits": 32, "cancelled": 0, "pending": 0}
    assert by_day["data"][0]["refused"] == 1
    by_model = api.get("/v1/usage?group_by=model", **tenant.auth).json()
    assert by_model["data"][0]["model"] == "dall-e-2"
    by_key = api.get("/v1/usage?group_by=key", **tenant.auth).json()
    assert by_key["data"][0]["key"] == tenant.key.prefix
    csv_response = api.get("/v1/usage?format=csv&group_by=model", **tenant.auth)
    assert csv_response["Content-Type"].startswith("text/csv")
    lines = csv_response.content.decode().strip().splitlines()
    assert lines[0].startswith("model,requests") and lines[1].startswith("dall-e-2,3,2,0,1,2,")


def test_usage_is_per_tenant(api, worker, make_tenant):
    a, b = make_tenant(), make_tenant()
    post_json(api, URL, SMALL, a)
    assert api.get("/v1/usage", **b.auth).json()["totals"]["requests"] == 0


@pytest.mark.parametrize("query", ["start=yesterday", "group_by=planet", "start=2026-02-01&end=2026-01-01"])
def test_usage_bad_query_is_400(api, registry, tenant, query):
    response = api.get(f"/v1/usage?{query}", **tenant.auth)
    assert response.status_code == 400 and "error" in response.json()
