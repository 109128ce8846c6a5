"""Moderation through the API: levels per tenant and request, bodies per profile, no charge."""
from __future__ import annotations

from django.core.management import call_command

from billing.models import CreditAccount, UsageRecord
from images.models import BlockedPrompt, Job
from tests.conftest import post_json

URL = "/v1/images/generations"
CORPSE = "a photo of a bloody corpse"


def gpt(prompt: str, **extra) -> dict:
    return {"model": "gpt-image-1", "prompt": prompt, "quality": "low", **extra}


def test_strict_tenant_blocks_gore_even_with_moderation_low(api, parked, tenant):
    call_command("tenant_update", tenant.tenant.name, "--moderation", "strict")
    response = post_json(api, URL, gpt(CORPSE, moderation="low"), tenant)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("image_generation_user_error", "moderation_blocked", None)
    assert "violence" in error["message"] and response["x-request-id"] in error["message"]
    assert not Job.objects.exists()
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0
    blocked = BlockedPrompt.objects.get()
    assert (blocked.prompt, blocked.level, blocked.categories) == (CORPSE, "strict", ["violence"])
    assert UsageRecord.objects.get(tenant=tenant.tenant).outcome == "blocked"


def test_low_tenant_gets_gore_with_moderation_low(api, worker, tenant):
    call_command("tenant_update", tenant.tenant.name, "--moderation", "low")
    response = post_json(api, URL, gpt(CORPSE, moderation="low"), tenant)
    assert response.status_code == 200, response.content


def test_standard_blocks_explicit_sexual_content_in_the_dalle_body(api, parked, tenant):
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "explicit porn of two people having sex"}, tenant)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "content_policy_violation")
    assert error["message"].startswith("Your request was rejected as a result of our safety system.")
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == 10_000


def test_minors_are_blocked_at_every_level(api, parked, tenant):
    call_command("tenant_update", tenant.tenant.name, "--moderation", "low")
    response = post_json(api, URL, gpt("nude child", moderation="low"), tenant)
    assert response.status_code == 400
    assert BlockedPrompt.objects.get().categories == ["sexual_minors"]


def test_innocent_words_pass(api, worker, tenant):
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "a therapist's office in Scunthorpe",
                                    "size": "256x256", "response_format": "b64_json"}, tenant)
    assert response.status_code == 200


def test_terms_are_editable(api, parked, tenant):
    from images.services import moderation as services
    from images.models import ModerationTerm

    ModerationTerm.objects.create(category="illicit", tier="explicit", term="purple unicorn")
    services._terms_cache["terms"] = None
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "A PURPLE Unicorn"}, tenant)
    assert response.status_code == 400 and response.json()["error"]["code"] == "content_policy_violation"
