from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from accounts.models import APIKey
from core.errors import NO_KEY_MESSAGE
from tests.conftest import post_json

URL = "/v1/images/generations"
BODY = {"model": "dall-e-2", "prompt": "x", "size": "256x256"}


def test_missing_key_is_401_with_openai_wording(api, registry):
    response = post_json(api, URL, BODY)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["message"] == NO_KEY_MESSAGE and error["message"].startswith("You didn't provide an API key.")
    assert error["code"] is None


def test_wrong_key_is_401_invalid_api_key_and_masks_it(api, registry, tenant):
    wrong = tenant.raw[:-4] + "zzzz"
    response = post_json(api, URL, BODY, HTTP_AUTHORIZATION=f"Bearer {wrong}")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert wrong not in error["message"] and "***" in error["message"]


def test_unknown_prefix_and_garbage_are_401(api, registry):
    for header in ("Bearer nope.nope", "Bearer x", "Basic abc", "Bearer "):
        response = post_json(api, URL, BODY, HTTP_AUTHORIZATION=header)
        assert response.status_code == 401, header


def test_revoked_key_is_401(api, registry, tenant):
    APIKey.objects.filter(pk=tenant.key.pk).update(revoked=True)
    response = post_json(api, URL, BODY, tenant)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_expired_key_is_401(api, registry, tenant):
    APIKey.objects.filter(pk=tenant.key.pk).update(expiry_date=timezone.now() - timedelta(minutes=1))
    assert post_json(api, URL, BODY, tenant).status_code == 401


def test_key_is_stored_hashed_and_shown_once(tenant):
    key = APIKey.objects.get(pk=tenant.key.pk)
    assert tenant.raw.split(".")[1] not in key.hashed_key
    assert key.prefix == tenant.raw.split(".")[0]


def test_last_used_is_recorded(api, registry, tenant):
    api.get("/v1/models", **tenant.auth)
    assert APIKey.objects.get(pk=tenant.key.pk).last_used_at is not None


def test_tenant_create_prints_the_key_last(db, capsys):
    from django.core.management import call_command

    call_command("tenant_create", "acme", "--credits", "500")
    lines = capsys.readouterr().out.strip().splitlines()
    assert "500" in "\n".join(lines[:-1])
    key = lines[-1]
    assert APIKey.objects.get(prefix=key.split(".")[0]).is_valid(key)
