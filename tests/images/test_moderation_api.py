"""Moderation through the API: levels per tenant and request, bodies per profile, no charge."""

from __future__ import annotations

import os

import pytest
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
    response = post_json(
        api,
        URL,
        {
            "model": "dall-e-2",
            "prompt": "a therapist's office in Scunthorpe",
            "size": "256x256",
            "response_format": "b64_json",
        },
        tenant,
    )
    assert response.status_code == 200


def test_terms_are_editable(api, parked, tenant):
    from images.models import ModerationTerm
    from images.services import moderation as services

    ModerationTerm.objects.create(category="illicit", tier="explicit", term="purple unicorn")
    services._terms_cache["terms"] = None
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "A PURPLE Unicorn"}, tenant)
    assert response.status_code == 400 and response.json()["error"]["code"] == "content_policy_violation"


# --- a classifier that fails (issue #13 item 15): MODERATION_CLASSIFIER_FAILURE -------------------

CLASSIFIER_CALLS: list[str] = []


def broken_classifier(text: str):
    """Loaded by path ("tests.images.test_moderation_api:broken_classifier"), like an operator's."""
    CLASSIFIER_CALLS.append(text)
    raise ConnectionError("classifier backend down")


def broken_classifier_settings(settings, policy: str) -> None:
    settings.MODERATION_CLASSIFIER = f"{__name__}:broken_classifier"
    settings.MODERATION_CLASSIFIER_FAILURE = policy
    CLASSIFIER_CALLS.clear()


def test_failing_classifier_fails_closed_with_a_503_the_sdk_does_not_retry(api, parked, tenant, settings):
    broken_classifier_settings(settings, "closed")
    response = post_json(api, URL, gpt("a lighthouse at dusk"), tenant)
    assert response.status_code == 503, response.content
    assert response["x-should-retry"] == "false"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "moderation_unavailable")
    assert CLASSIFIER_CALLS == ["a lighthouse at dusk"]
    assert not Job.objects.exists()
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_closed_classifier_failure_still_blocks_by_the_term_lists(api, parked, tenant, settings):
    broken_classifier_settings(settings, "closed")
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "explicit porn"}, tenant)
    assert response.status_code == 400 and response.json()["error"]["code"] == "content_policy_violation"
    assert BlockedPrompt.objects.get().categories == ["sexual"]


def test_closed_is_the_default():
    import settings as project_settings  # platform/settings.py, as read at start-up

    if "MODERATION_CLASSIFIER_FAILURE" in os.environ:
        pytest.skip("MODERATION_CLASSIFIER_FAILURE is set in this environment")
    assert project_settings.MODERATION_CLASSIFIER_FAILURE == "closed"


def test_unloadable_classifier_fails_closed_too(api, parked, tenant, settings):
    broken_classifier_settings(settings, "closed")
    settings.MODERATION_CLASSIFIER = "no_such_module_xyz:classify"
    response = post_json(api, URL, gpt("a lighthouse at dusk"), tenant)
    assert response.status_code == 503 and response["x-should-retry"] == "false"


def test_failing_classifier_fails_open_to_the_term_lists(api, parked, tenant, settings):
    broken_classifier_settings(settings, "open")
    accepted = post_json(api, URL, gpt("a lighthouse at dusk"), tenant)
    # Accepted and queued (parked: the request stops waiting at once with the job id).
    assert accepted.json()["error"]["code"] == "job_wait_timeout", accepted.content
    assert CLASSIFIER_CALLS == ["a lighthouse at dusk"] and Job.objects.count() == 1
    blocked = post_json(api, URL, {"model": "dall-e-2", "prompt": "explicit porn"}, tenant)
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "content_policy_violation"
    assert Job.objects.count() == 1
