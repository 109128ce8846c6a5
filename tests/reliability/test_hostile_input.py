"""Hand-written hostile input: every one a 4xx in the envelope, never a 5xx, nothing charged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from billing.models import CreditAccount
from images.models import Job
from tests.conftest import post_json

URL = "/v1/images/generations"


def raw_post(api, tenant, body: bytes, content_type: str = "application/json"):
    return api.post(URL, data=body, content_type=content_type, **tenant.auth)


def assert_refused(response, status: int, tenant) -> dict:
    assert response.status_code == status, response.content[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert not Job.objects.exists()
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0
    return error


def test_body_past_the_size_limit_is_413(api, parked, tenant, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"prompt": "x" * 5000}).encode()
    assert_refused(raw_post(api, tenant, body), 413, tenant)


def test_deeply_nested_json_is_400(api, parked, tenant):
    body = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_refused(raw_post(api, tenant, body), 400, tenant)


def test_invalid_utf8_is_400(api, parked, tenant):
    assert_refused(raw_post(api, tenant, b'{"prompt": "\xc3\x28 bad"}'), 400, tenant)


def test_control_characters_in_prompts_do_not_break_anything(api, worker, tenant):
    response = post_json(
        api,
        URL,
        {
            "model": "dall-e-2",
            "prompt": "a\x01b\x1b[31mc\u202e\ufeffd",
            "size": "256x256",
            "response_format": "b64_json",
        },
        tenant,
    )
    assert response.status_code == 200


def test_nul_in_prompt_is_400(api, parked, tenant):
    assert_refused(post_json(api, URL, {"model": "dall-e-2", "prompt": "a\x00b"}, tenant), 400, tenant)


@pytest.mark.parametrize("n", [10**30, -(10**30), "1e309", 1e308, [], {}, "ten"])
def test_absurd_n_is_400(api, parked, tenant, n):
    assert_refused(post_json(api, URL, {"model": "dall-e-2", "prompt": "x", "n": n}, tenant), 400, tenant)


@pytest.mark.parametrize(
    "size",
    ["99999999x99999999", "0x0", "-256x-256", "256X256", "256x256x256", "x" * 10_000, "１０２４x１０２４", 256, "", []],
)
def test_absurd_size_is_400(api, parked, tenant, size):
    assert_refused(post_json(api, URL, {"model": "dall-e-2", "prompt": "x", "size": size}, tenant), 400, tenant)


def test_huge_seed_and_wrong_types_are_400(api, parked, tenant):
    for body in (
        {"model": "dall-e-2", "prompt": "x", "seed": 2**80},
        {"model": ["dall-e-2"], "prompt": "x"},
        {"model": "dall-e-2", "prompt": {"text": "x"}},
        {"model": "dall-e-2", "prompt": "x", "stream": "maybe"},
    ):
        assert_refused(post_json(api, URL, body, tenant), 400, tenant)


def test_check_deploy_is_clean_under_production_settings(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "DEBUG": "false",
        "SECRET_KEY": "a-long-random-production-secret-key-" + "x9Q" * 20,
        "ALLOWED_HOSTS": "api.example.com",
        "SECURE_SSL_REDIRECT": "true",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
        "BEHIND_TLS_PROXY": "true",
        # Without it, accounts.W001: sign-in links would go to the log.
        "EMAIL_URL": "smtp+tls://mailer:secret@smtp.example.com:587",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
        "DEBUG": "false",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_admin_and_key_forms_need_csrf(db, tenant):
    from django.contrib.auth.models import User
    from django.test import Client

    User.objects.create_superuser("root", "root@example.com", "pw-123456")
    client = Client(enforce_csrf_checks=True)
    response = client.post("/admin/login/", {"username": "root", "password": "pw-123456"})
    assert response.status_code == 403  # no CSRF token


def test_full_keys_never_reach_the_logs(api, worker, tenant, caplog):
    caplog.set_level("DEBUG")
    post_json(api, URL, {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}, tenant)
    post_json(api, URL, {"prompt": "x"}, HTTP_AUTHORIZATION=f"Bearer {tenant.raw}zz")
    api.get("/v1/balance", HTTP_AUTHORIZATION=f"Bearer {tenant.raw}")
    secret = tenant.raw.split(".")[1]
    assert secret not in caplog.text and secret[:12] not in caplog.text
