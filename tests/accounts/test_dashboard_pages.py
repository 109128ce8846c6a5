"""The pages a person sees, server-side (the browser journey, tests/test_journey_browser.py,
drives the same pages in chromium): the home quickstart, the key shown once, the
playground's model options and the fields it sends, a refused voucher in the error style,
allauth's pages in the dashboard's look."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts.models import Membership

PASSWORD = "pw-correct-horse-9"


@pytest.fixture
def owner(db, tenant) -> Client:
    user = User.objects.create_user("olive", "olive@example.com", PASSWORD)
    Membership.objects.create(user=user, tenant=tenant.tenant, role=Membership.Role.OWNER)
    client = Client()
    client.force_login(user)
    return client


def test_home_shows_base_url_sdk_samples_and_docs_link_without_any_key(owner, registry, tenant):
    page = html.unescape(owner.get("/dashboard/").content.decode())
    assert '<code id="base-url" class="secret">http://testserver/v1</code>' in page
    assert "from openai import OpenAI" in page and 'base_url="http://testserver/v1"' in page
    assert "curl http://testserver/v1/images/generations" in page
    assert 'import OpenAI from "openai"' in page and 'baseURL: "http://testserver/v1"' in page
    assert 'href="/docs/" id="docs-link"' in page
    assert "$IMAGE_API_KEY" in page and tenant.key.prefix not in page  # a placeholder, never a stored key


def test_new_key_page_shows_it_once_with_copy_button_base_url_and_sample(owner, registry):
    page = owner.post("/dashboard/keys/", {"name": "ci"}).content.decode()
    raw = re.search(r'<code id="raw-key" class="secret">([^<]+)</code>', page).group(1)
    assert 'data-copy="#raw-key"' in page and "dashboard/copy.js" in page
    assert '<code id="base-url">http://testserver/v1</code>' in page
    sample = re.search(r'<pre class="code" id="key-sample"[^>]*>(.*?)</pre>', page, re.S).group(1)
    assert "curl http://testserver/v1/images/generations" in sample and raw not in sample
    assert raw not in owner.get("/dashboard/keys/").content.decode()


def playground_models(client: Client) -> dict[str, dict]:
    page = client.get("/dashboard/playground/").content.decode()
    data = re.search(r'<script id="playground-models" type="application/json">(.*?)</script>', page, re.S).group(1)
    return {m["id"]: m for m in json.loads(data)}


def test_playground_options_come_from_each_models_profile(owner, registry):
    models = playground_models(owner)
    assert models["dall-e-3"]["sizes"] == ["1024x1024", "1792x1024", "1024x1792"]
    assert models["dall-e-3"]["qualities"] == ["standard", "hd"] and models["dall-e-3"]["n_max"] == 1
    assert models["dall-e-3"]["styles"] == ["vivid", "natural"] and models["dall-e-3"]["formats"] == []
    assert "256x256" in models["dall-e-2"]["sizes"] and models["dall-e-2"]["n_max"] == 10
    assert models["gpt-image-1"]["formats"] == ["png", "jpeg", "webp"]
    assert "1536x1024" in models["gpt-image-1"]["sizes"] and models["gpt-image-1"]["default_quality"] == "high"


def test_playground_negative_prompt_follows_the_family(owner, registry):
    from images.models import ImageModel

    model = ImageModel.objects.get(public_id="dall-e-2")
    model.capabilities, model.capabilities_source = {"family": "flux", "negative_prompt": False}, model.source
    model.save()
    models = playground_models(owner)
    assert models["dall-e-2"]["negative_prompt"] is False and models["dall-e-3"]["negative_prompt"] is True


def test_playground_sends_the_profiles_fields_and_the_rules_still_apply(owner, parked):
    from images.models import Job

    csrf = {"HTTP_ACCEPT": "application/json"}
    body = {"prompt": "a fox", "model": "gpt-image-1", "size": "1536x1024", "quality": "low", "n": 2}
    answer = owner.post(
        "/dashboard/api/generations",
        json.dumps({**body, "output_format": "webp", "seed": 42, "negative_prompt": "blur"}),
        content_type="application/json",
        **csrf,
    )
    assert answer.status_code == 202, answer.content
    job = Job.objects.get(pk=answer.json()["id"])
    assert (job.n, job.size, job.seed, job.params["quality"], job.params["output_format"]) == (
        2,
        "1536x1024",
        42,
        "low",
        "webp",
    )
    assert job.params["negative_prompt"] == "blur"
    refused = owner.post(
        "/dashboard/api/generations",
        json.dumps({"prompt": "a fox", "model": "dall-e-3", "size": "256x256"}),
        content_type="application/json",
        **csrf,
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "size"


def test_refused_voucher_is_an_error_message_not_a_success(owner, registry, settings):
    settings.VOUCHERS_ENABLED = True
    answer = owner.post("/dashboard/billing/redeem/", {"code": "WRONG-CODE-1234"})
    page = answer.content.decode()
    assert answer.status_code == 400
    assert re.search(r'<ul class="messages"><li class="error">[^<]+</li>', page)
    assert 'class="success"' not in page


@pytest.mark.parametrize(
    "path", ["/accounts/signup/", "/accounts/login/", "/accounts/password/reset/", "/dashboard/login/"]
)
def test_account_pages_wear_the_dashboard_look(client, db, path):
    page = client.get(path).content.decode()
    assert "Menu:" not in page
    assert "dashboard/dashboard.css" in page and '<header class="top">' in page


def test_sign_in_asks_for_the_email_and_accepts_it(client, db):
    User.objects.create_user("u-8f2a", "person@example.com", PASSWORD)
    page = client.get("/dashboard/login/").content.decode()
    assert "<label>Email <input" in page and "Username" not in page
    answer = client.post("/dashboard/login/", {"username": "person@example.com", "password": PASSWORD})
    assert answer.status_code == 302 and client.session.get("_auth_user_id")
