"""The dashboard playground's LoRA picker (issue 23): it offers, for each model, exactly
the adapters the signed-in member's tenant may use with it (never another tenant's
private ones), and what it sends as `loras` is validated and charged like the API's."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from accounts.models import Membership
from billing.models import CreditAccount
from images.models import ImageModel, Job
from tests.accounts.test_dashboard_pages import playground_models
from tests.images.test_lora_uploads import PEFT, safetensors


@pytest.fixture
def member(db, tenant) -> Client:
    user = User.objects.create_user("mona", "mona@example.com", "pw-correct-horse-9")
    Membership.objects.create(user=user, tenant=tenant.tenant, role=Membership.Role.MEMBER)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def catalog(registry, make_tenant, tenant, settings, tmp_path):
    """fox: everyone's (5 credits); secret: another tenant's grant; mine: the tenant's upload."""
    from io import BytesIO

    from images.services.loras import lora_upload

    settings.LORA_TENANT_UPLOADS, settings.MEDIA_ROOT = "all", str(tmp_path / "media")
    (tmp_path / "a.safetensors").write_bytes(safetensors(PEFT))
    other = make_tenant()
    call_command("lora_add", "fox", str(tmp_path / "a.safetensors"), "--base", "dall-e-2", "--credits", "5")
    call_command(
        "lora_add", "secret", str(tmp_path / "a.safetensors"), "--base", "dall-e-2", "--tenants", other.tenant.name
    )
    data = safetensors(PEFT)
    mine = lora_upload(tenant=tenant.tenant, name="mine", base="dall-e-2", upload=BytesIO(data), size=len(data))
    return mine.name


def test_the_picker_offers_the_tenants_adapters_for_each_model(member, catalog):
    models = playground_models(member)
    assert models["dall-e-2"]["loras"] == [
        {"id": "fox", "trigger": "", "surcharge_credits": 5},
        {"id": catalog, "trigger": "", "surcharge_credits": 0},
    ]
    assert models["dall-e-3"]["loras"] == []
    assert models["dall-e-2"]["loras_max"] == 3
    page = member.get("/dashboard/playground/").content.decode()
    assert 'id="loras-field"' in page and "secret" not in page


def test_the_picker_follows_a_family_adapter(member, catalog, tmp_path):
    model = ImageModel.objects.get(public_id="dall-e-3")
    model.capabilities, model.capabilities_source = {"family": "sd"}, model.source
    model.save()
    call_command("lora_add", "sd-style", str(tmp_path / "a.safetensors"), "--family", "sd")
    assert [lora["id"] for lora in playground_models(member)["dall-e-3"]["loras"]] == ["sd-style"]


def test_what_the_playground_sends_is_checked_and_priced_like_the_api(member, catalog, parked, tenant):
    headers = {"HTTP_ACCEPT": "application/json"}
    body = {"prompt": "a fox", "model": "dall-e-2", "size": "256x256"}

    def send(loras):
        return member.post(
            "/dashboard/api/generations",
            json.dumps({**body, "loras": loras}),
            content_type="application/json",
            **headers,
        )

    refused = send([{"name": "secret", "scale": 1}])
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "lora_not_found"
    assert send([{"name": "fox", "scale": 3}]).json()["error"]["param"] == "loras[0].scale"
    accepted = send([{"name": "fox", "scale": 0.5}, {"name": catalog, "scale": 1}])
    assert accepted.status_code == 202, accepted.content
    job = Job.objects.get(pk=accepted.json()["id"])
    assert [(lora["name"], lora["scale"]) for lora in job.params["loras"]] == [("fox", 0.5), (catalog, 1.0)]
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 16 + 5
