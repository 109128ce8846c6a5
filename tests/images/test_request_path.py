"""Every entry point against every rule of the one request path.

Each charged entry point (the three OpenAI endpoints, the three vendor shapes of the
seeds, the AIGNE edit, the dashboard playground) is driven with a request that breaks
one rule; every pair must get the same refusal (status and code), and nothing may be
charged, held, queued or stored. Rules about an API key's own scope (its model list and
monthly budget) do not exist for a signed-in member, who has no key: those pairs are
left out of the matrix, not skipped.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from PIL import Image
from rest_framework.test import APIClient

from accounts.models import Membership, Tenant
from billing.models import CreditAccount, Hold
from images.models import Job

PROMPT = "a lighthouse at dawn"
BLOCKED = "a photo of a bloody corpse"  # blocked at the strict level (violence, mild tier)


def _png(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (90, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _file(name: str = "a.png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, _png(), content_type="image/png")


@dataclass
class Entry:
    name: str
    send: Callable[..., Any]  # (client, tenant_key, *, prompt, extra, headers) -> response
    key_scoped: bool = True  # the caller is an API key (model list and budget apply)
    has_prompt: bool = True


def _json(path: str, base: dict[str, Any]):
    def send(client, who, *, prompt, extra, headers):
        body = {**base, **({"prompt": prompt} if "prompt" in base else {}), **extra}
        return client.post(path, body, format="json", **who.auth, **headers)

    return send


def _multipart(path: str, base: dict[str, Any], *, mask: bool = False):
    def send(client, who, *, prompt, extra, headers):
        body = {**base, **({"prompt": prompt} if "prompt" in base else {}), **extra, "image": _file()}
        return client.post(path, body, format="multipart", **who.auth, **headers)

    return send


def _playground(client, who, *, prompt, extra, headers):
    client.force_login(who.member)
    return client.post(
        "/dashboard/api/generations",
        {"prompt": prompt, "model": "dall-e-2", "size": "256x256", **extra},
        format="json",
        **headers,
    )


ENTRIES = [
    Entry(
        "openai-generations",
        _json("/v1/images/generations", {"model": "dall-e-2", "prompt": PROMPT, "size": "256x256"}),
    ),
    Entry("openai-edits", _multipart("/v1/images/edits", {"model": "dall-e-2", "prompt": PROMPT, "size": "256x256"})),
    Entry(
        "openai-variations",
        _multipart("/v1/images/variations", {"model": "dall-e-2", "size": "256x256"}),
        has_prompt=False,
    ),
    Entry("seed000-vision", _json("/v1/vision/generate", {"prompt": PROMPT, "size": "1024x1024"})),
    Entry("seed002-aigne", _json("/api/images/generations", {"prompt": PROMPT, "size": "256x256"})),
    Entry(
        "seed002-aigne-edit",
        _json(
            "/api/images/generations",
            {
                "prompt": PROMPT,
                "size": "256x256",
                "image": "data:image/png;base64," + base64.b64encode(_png()).decode(),
            },
        ),
    ),
    Entry(
        "seed003-reseller", _json("/api/v1/image/generation", {"prompt": PROMPT, "size": "1024x1024", "quality": "low"})
    ),
    Entry("playground", _playground, key_scoped=False),
]


@dataclass
class Who:
    tenant: Tenant
    key: Any
    raw: str
    member: Any

    @property
    def auth(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.raw}"}


@pytest.fixture
def who(make_tenant, parked, settings, tmp_path) -> Who:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    made = make_tenant(credits=10_000)
    user = get_user_model().objects.create_user(username=f"m-{made.tenant.pk}", password="x-long-enough-1")
    Membership.objects.create(user=user, tenant=made.tenant, role=Membership.Role.MEMBER)
    return Who(made.tenant, made.key, made.raw, user)


def _model_of(entry: Entry) -> str:
    return {"seed000-vision": "alphaedge-vision-3-1-2505", "seed003-reseller": "gpt-image-1.5"}.get(
        entry.name, "dall-e-2"
    )


def _rule_suspended(who: Who, entry: Entry):
    Tenant.objects.filter(pk=who.tenant.pk).update(status=Tenant.Status.SUSPENDED)
    return {}, {}, (403, "tenant_suspended")


def _rule_model_list(who: Who, entry: Entry):
    who.key.allowed_models = ["some-other-model"]
    who.key.save(update_fields=["allowed_models"])
    return {}, {}, (403, "model_not_allowed")


def _rule_budget(who: Who, entry: Entry):
    who.key.monthly_credit_limit = 1
    who.key.save(update_fields=["monthly_credit_limit"])
    return {}, {}, (402, "key_budget_exceeded")


def _rule_rate_limit(who: Who, entry: Entry):
    Tenant.objects.filter(pk=who.tenant.pk).update(rpm_limit=1)
    assert APIClient().get("/v1/balance", **who.auth).status_code == 200  # the tenant's one request this minute
    return {}, {}, (429, "rate_limit_exceeded")


def _rule_in_flight(who: Who, entry: Entry):
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from billing.services import credits_hold
    from images.models import ImageModel

    Tenant.objects.filter(pk=who.tenant.pk).update(max_concurrent_jobs=1)
    with transaction.atomic():  # a job in flight: its row and its hold, as the platform makes them
        in_flight = Job.objects.create(
            tenant=who.tenant,
            model=ImageModel.objects.get(public_id="dall-e-2"),
            params={},
            prompt="x",
            width=256,
            height=256,
            steps=1,
            guidance=1.0,
            seed=1,
            deadline=timezone.now() + timedelta(minutes=5),
        )
        credits_hold(tenant=who.tenant, api_key=None, job=in_flight, amount=1)
    return {}, {}, (429, "rate_limit_exceeded")


def _rule_moderation(who: Who, entry: Entry):
    Tenant.objects.filter(pk=who.tenant.pk).update(moderation_level=Tenant.Moderation.STRICT)
    code = "moderation_blocked" if _model_of(entry).startswith("gpt-image") else "content_policy_violation"
    return {"prompt": BLOCKED}, {}, (400, code)


def _rule_credits(who: Who, entry: Entry):
    from billing.services import credits_grant

    credits_grant(tenant=who.tenant, amount=-10_000 + 1)  # 1 credit left: less than any price
    return {}, {}, (402, "insufficient_quota")


def _rule_bad_parameter(who: Who, entry: Entry):
    return {"extra": {"qualty": "low"}}, {}, (400, "unknown_parameter")


RULES = {
    "suspended-tenant": _rule_suspended,
    "model-not-in-key-list": _rule_model_list,
    "key-monthly-budget": _rule_budget,
    "rate-limit": _rule_rate_limit,
    "in-flight-cap": _rule_in_flight,
    "moderation": _rule_moderation,
    "insufficient-credits": _rule_credits,
    "bad-parameter": _rule_bad_parameter,
}
KEY_RULES = {"model-not-in-key-list", "key-monthly-budget"}

PAIRS = [
    (entry, rule)
    for entry in ENTRIES
    for rule in RULES
    if (entry.key_scoped or rule not in KEY_RULES) and (entry.has_prompt or rule != "moderation")
]


def _error(response) -> dict[str, Any]:
    body = response.json()
    return body["error"]  # the OpenAI envelope, also inside seed 003's envelope


def _nothing_charged_or_stored(who: Who, *, jobs_before: int, media: Path, account_before: CreditAccount) -> None:
    """No job, hold or credit more than before the refused request (the in-flight rule
    starts with one job in flight, holding 1 credit)."""
    assert Job.objects.filter(tenant=who.tenant).count() == jobs_before
    assert Hold.objects.filter(tenant=who.tenant).count() == account_before.holds_open
    account = CreditAccount.objects.get(tenant=who.tenant)
    assert (account.balance, account.held, account.holds_open) == (
        account_before.balance,
        account_before.held,
        account_before.holds_open,
    )
    inputs = media / "inputs"
    assert not inputs.exists() or not any(p.is_file() for p in inputs.rglob("*"))


@pytest.mark.parametrize("entry,rule", PAIRS, ids=[f"{e.name}:{r}" for e, r in PAIRS])
def test_every_entry_point_refuses_alike_and_charges_nothing(who, entry, rule, settings):
    overrides, headers, (status, code) = RULES[rule](who, entry)
    jobs_before = Job.objects.filter(tenant=who.tenant).count()
    account_before = CreditAccount.objects.get(tenant=who.tenant)
    response = entry.send(
        APIClient(), who, prompt=overrides.get("prompt", PROMPT), extra=overrides.get("extra", {}), headers=headers
    )
    assert response.status_code == status, response.content[:500]
    error = _error(response)
    assert {"message", "type", "param", "code"} <= set(error)  # (a 402 may add top_up_url)
    assert error["code"] == code, error
    _nothing_charged_or_stored(
        who, jobs_before=jobs_before, media=Path(settings.MEDIA_ROOT), account_before=account_before
    )


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_entry_point_honours_idempotency_key(who, entry):
    """The same Idempotency-Key twice while the first job is queued: one job, one hold,
    and the repeat is 409 (the SDK retries it) on every entry point."""
    headers = {"HTTP_IDEMPOTENCY_KEY": f"order-{entry.name}"}
    first = entry.send(APIClient(), who, prompt=PROMPT, extra={}, headers=headers)
    assert first.status_code in (202, 504), first.content[:500]  # queued on a queue no worker serves
    second = entry.send(APIClient(), who, prompt=PROMPT, extra={}, headers=headers)
    assert second.status_code == 409, second.content[:500]
    assert _error(second)["code"] == "idempotency_request_in_progress"
    assert Job.objects.filter(tenant=who.tenant).count() == 1
    assert Hold.objects.filter(tenant=who.tenant).count() == 1


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_entry_point_queues_a_paid_job_when_nothing_refuses(who, entry):
    """The control for the matrix: the same requests without a broken rule are accepted
    (queued, credits held), so each refusal above is the rule's doing."""
    response = entry.send(APIClient(), who, prompt=PROMPT, extra={}, headers={"HTTP_PREFER": "respond-async"})
    assert response.status_code == 202, response.content[:500]
    job = Job.objects.get(tenant=who.tenant)
    assert job.model.public_id == _model_of(entry)
    assert Hold.objects.get(job=job).amount == job.quote > 0
