"""`moderation` is never accepted and ignored: a JSON edit (whose schema has it) honours
it exactly as a generation does; every body that has no such field (a multipart edit,
a variation, the vendor shapes without it, the playground) refuses it with 400
`unknown_parameter` and charges nothing."""

from __future__ import annotations

import base64
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image

from billing.models import CreditAccount
from images.models import BlockedPrompt, Job
from tests.conftest import post_json

EXPLICIT = "explicit porn of two people having sex"  # blocked at `standard`, allowed at `low`
EDITS = "/v1/images/edits"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _json_edit(**extra) -> dict:
    uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
    return {"model": "gpt-image-1", "prompt": EXPLICIT, "quality": "low", "images": [{"image_url": uri}], **extra}


@pytest.fixture
def low_tenant(tenant):
    call_command("tenant_update", tenant.tenant.name, "--moderation", "low")
    return tenant


def test_json_edit_honours_moderation_low_like_a_generation(api, parked, low_tenant):
    generation = {"model": "gpt-image-1", "prompt": EXPLICIT, "quality": "low", "moderation": "low"}
    assert (
        post_json(api, "/v1/images/generations", generation, low_tenant, HTTP_PREFER="respond-async").status_code == 202
    )
    response = post_json(api, EDITS, _json_edit(moderation="low"), low_tenant, HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    assert Job.objects.filter(tenant=low_tenant.tenant, kind="edit").count() == 1
    assert not BlockedPrompt.objects.exists()


@pytest.mark.parametrize("moderation", ["auto", None, "absent"])
def test_json_edit_with_moderation_auto_is_checked_at_standard(api, parked, low_tenant, moderation):
    body = _json_edit() if moderation == "absent" else _json_edit(moderation=moderation)
    response = post_json(api, EDITS, body, low_tenant)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "moderation_blocked"
    assert BlockedPrompt.objects.get().level == "standard"
    assert not Job.objects.exists() and CreditAccount.objects.get(tenant=low_tenant.tenant).held == 0


def test_json_edit_refuses_a_bad_moderation_value(api, parked, tenant):
    response = post_json(api, EDITS, _json_edit(prompt="a lighthouse", moderation="none"), tenant)
    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("invalid_value", "moderation")


def _multipart(api, tenant, path: str, fields: dict):
    body = {**fields, "image": SimpleUploadedFile("a.png", _png(), content_type="image/png")}
    return api.post(path, body, format="multipart", **tenant.auth)


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(
            lambda api, t: _multipart(
                api, t, EDITS, {"model": "gpt-image-1", "prompt": "a lighthouse", "moderation": "low"}
            ),
            id="multipart-edit-gpt",
        ),
        pytest.param(
            lambda api, t: _multipart(
                api, t, EDITS, {"model": "dall-e-2", "prompt": "a lighthouse", "moderation": "low"}
            ),
            id="multipart-edit-dalle",
        ),
        pytest.param(
            lambda api, t: _multipart(api, t, "/v1/images/variations", {"model": "dall-e-2", "moderation": "low"}),
            id="variation",
        ),
        pytest.param(
            lambda api, t: post_json(api, "/v1/vision/generate", {"prompt": "a lighthouse", "moderation": "low"}, t),
            id="seed000-vision",
        ),
        pytest.param(
            lambda api, t: post_json(
                api,
                "/api/images/generations",
                {"prompt": "a lighthouse", "moderation": "low", "image": _json_edit()["images"][0]["image_url"]},
                t,
            ),
            id="seed002-aigne-edit",
        ),
    ],
)
def test_bodies_without_moderation_refuse_it(api, parked, tenant, send):
    response = send(api, tenant)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unknown_parameter", "moderation")
    assert not Job.objects.exists() and CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_playground_refuses_moderation(api, parked, tenant):
    from django.contrib.auth import get_user_model

    from accounts.models import Membership

    user = get_user_model().objects.create_user(username="mod-member", password="x-long-enough-1")
    Membership.objects.create(user=user, tenant=tenant.tenant, role=Membership.Role.MEMBER)
    api.force_login(user)
    response = api.post("/dashboard/api/generations", {"prompt": "a lighthouse", "moderation": "low"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_parameter"
    assert not Job.objects.exists()
