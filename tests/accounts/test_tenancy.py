"""Tenants, key lifecycle, isolation and rate limits."""

from __future__ import annotations

import time

import pytest
from django.core.management import CommandError, call_command

from accounts.models import APIKey
from billing.models import CreditAccount
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_key_create_options_and_revoke(api, registry, tenant, capsys):
    call_command(
        "key_create",
        tenant.tenant.name,
        "--name",
        "ci",
        "--rpm",
        "5",
        "--models",
        "dall-e-2,dall-e-3",
        "--expires",
        "2099-01-01T00:00:00Z",
    )
    raw = last_line(capsys)
    key = APIKey.objects.get(prefix=raw.split(".")[0])
    assert (key.name, key.rpm_limit, key.allowed_models, key.expiry_date.year) == (
        "ci",
        5,
        ["dall-e-2", "dall-e-3"],
        2099,
    )
    assert api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    call_command("key_revoke", key.prefix)
    response = api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "args", [["nobody"], ["{t}", "--rpm", "0"], ["{t}", "--expires", "soon"], ["{t}", "--models", "dall-e-9"]]
)
def test_key_create_refuses_bad_arguments(registry, tenant, args):
    with pytest.raises(CommandError):
        call_command("key_create", *[a.format(t=tenant.tenant.name) for a in args])


def test_model_outside_the_key_list_is_403(api, parked, tenant):
    APIKey.objects.filter(pk=tenant.key.pk).update(allowed_models=["dall-e-3"])
    response = post_json(api, URL, SMALL, tenant)
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_suspended_tenant_gets_403_and_is_not_charged(api, parked, tenant):
    call_command("tenant_update", tenant.tenant.name, "--suspend")
    response = post_json(api, URL, SMALL, tenant)
    assert response.status_code == 403 and response.json()["error"]["code"] == "tenant_suspended"
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0
    call_command("tenant_update", tenant.tenant.name, "--activate", "--moderation", "strict", "--rpm", "50")
    tenant.tenant.refresh_from_db()
    assert (tenant.tenant.status, tenant.tenant.moderation_level, tenant.tenant.rpm_limit) == ("active", "strict", 50)
    assert api.get("/v1/balance", **tenant.auth).status_code == 200


def test_key_rpm_limit_gives_429_with_retry_after(api, registry, tenant, capsys):
    call_command("key_create", tenant.tenant.name, "--rpm", "3")
    raw = last_line(capsys)
    responses = [api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {raw}") for _ in range(6)]
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 429, 429, 429]
    refused = responses[-1]
    assert (
        refused.json()["error"]["code"] == "rate_limit_exceeded"
        and refused.json()["error"]["type"] == "rate_limit_exceeded"
    )
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert [r["x-ratelimit-remaining-requests"] for r in responses[:3]] == ["2", "1", "0"]
    assert responses[0]["x-ratelimit-limit-requests"] == "3"
    assert responses[0]["x-ratelimit-reset-requests"].endswith("s")
    # The tenant's other keys are not limited by this key's rpm.
    assert api.get("/v1/balance", **tenant.auth).status_code == 200


def test_tenant_rpm_limit_covers_all_its_keys(api, registry, tenant, capsys):
    call_command("tenant_update", tenant.tenant.name, "--rpm", "2")
    call_command("key_create", tenant.tenant.name)
    other = last_line(capsys)
    assert api.get("/v1/balance", **tenant.auth).status_code == 200
    assert api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 200
    assert api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 429


def test_rate_limited_generation_is_not_charged(api, parked, tenant):
    call_command("tenant_update", tenant.tenant.name, "--rpm", "1")
    post_json(api, URL, SMALL, tenant)
    refused = post_json(api, URL, SMALL, tenant)
    assert refused.status_code == 429
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert account.held == 16 and account.balance == 10_000  # only the first request holds


def test_jobs_in_flight_cap_is_429(api, parked, tenant):
    call_command("tenant_update", tenant.tenant.name, "--max-concurrent", "2")
    statuses = [post_json(api, URL, SMALL, tenant).status_code for _ in range(3)]
    assert statuses == [504, 504, 429]  # two parked jobs in flight, the third refused
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 32


def test_admin_key_manages_keys_of_its_own_tenant(api, registry, make_tenant, capsys):
    a, b = make_tenant(), make_tenant()
    call_command("key_create", a.tenant.name, "--admin")
    admin = {"HTTP_AUTHORIZATION": f"Bearer {last_line(capsys)}"}
    created = api.post("/v1/keys", {"name": "ci", "rpm_limit": 10}, format="json", **admin)
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(body["id"] + ".") and body["rpm_limit"] == 10
    listed = api.get("/v1/keys", **admin).json()["data"]
    assert body["id"] in {k["id"] for k in listed} and all("key" not in k for k in listed)
    assert api.delete(f"/v1/keys/{b.key.prefix}", **admin).status_code == 404  # another tenant's key
    assert api.delete(f"/v1/keys/{body['id']}", **admin).json()["revoked"] is True
    assert api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {body['key']}").status_code == 401


def test_ordinary_key_cannot_manage_keys(api, registry, tenant):
    response = api.post("/v1/keys", {"name": "x"}, format="json", **tenant.auth)
    assert response.status_code == 403


# Owners' sessions on /v1/keys: tests/accounts/test_keys_api.py.


def test_tenant_cannot_read_another_tenants_image(api, worker, make_tenant):
    from images.files import image_token
    from images.models import GeneratedImage

    a, b = make_tenant(), make_tenant()
    post_json(api, URL, SMALL, a)
    image = GeneratedImage.objects.get(job__tenant=a.tenant)
    # A token naming A's image but signed for B's tenant id does not resolve.
    from django.core import signing

    forged = signing.TimestampSigner(salt="images.link").sign_object({"i": image.id.hex, "t": b.tenant.pk})
    assert api.get(f"/v1/files/{forged}").status_code == 404
    assert api.get(f"/v1/files/{image_token(image)}").status_code == 200


def test_a_windows_counts_expire_after_the_window(api, registry, tenant, capsys):
    """Each bucket's count lives under a key naming its window, which expires a few
    seconds after it (accounts.ratelimit: one script counts every bucket and sets a new
    key's expiry): nothing is left behind in the cache's Redis."""
    from core.redis import redis_client

    call_command("key_create", tenant.tenant.name, "--rpm", "5")
    raw = last_line(capsys)
    assert [api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code for _ in range(2)] == [200, 200]
    prefix = raw.split(".")[0]
    client = redis_client()
    if client is None:  # the embedded cache: its own timeouts (cache.add with WINDOW + 5)
        from django.core.cache import cache

        now = int(time.time()) // 60 * 60
        assert sum(cache.get(f"rl:k:{prefix}:{start}", 0) for start in (now, now - 60)) == 2
        return
    names = [name for name in client.scan_iter(match="*rl:k:*") if prefix.encode() in name]
    assert len(names) == 1 and int(client.get(names[0])) == 2
    assert 0 < client.ttl(names[0]) <= 65
