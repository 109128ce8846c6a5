"""Prices as data (issue 21): `pricing` on GET /v1/models and /v1/models/{id}, listed by
the same rule as price_quote, and money shown in its currency (Babel)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.currencies import decimal_money_format, money_format
from billing.models import Price
from billing.selectors import credits_money, model_price_list
from billing.services import price_quote
from images.models import ImageModel
from images.profiles import PROFILES
from images.tool_models import MODEL_KIND_OF_JOB


def _pricing(detail: dict) -> dict[tuple[str, str, str], dict]:
    return {(p["kind"], p["size"], p["quality"]): p for p in detail["pricing"]}


def test_dalle2_256_is_priced_on_the_model_object(api, registry, tenant):
    detail = api.get("/v1/models/dall-e-2", **tenant.auth).json()
    assert {"id", "object", "created", "owned_by"} <= set(detail)  # OpenAI's fields unchanged
    line = _pricing(detail)[("generate", "256x256", "standard")]
    assert line == {
        "kind": "generate",
        "size": "256x256",
        "quality": "standard",
        "credits": 16,
        "amount": "0.016",
        "currency": "USD",
    }


def test_every_listed_price_is_what_a_request_is_charged(api, registry, tenant):
    listing = api.get("/v1/models", **tenant.auth).json()
    models = {m.public_id: m for m in ImageModel.objects.all()}
    checked = 0
    for item in listing["data"]:
        model = models[item["id"]]
        profile = PROFILES[model.profile]
        lines = _pricing(item)
        if model.kind != ImageModel.Kind.GENERATOR:  # a tool model: its one job kind, any size
            kinds = [job for job, served_by in MODEL_KIND_OF_JOB.items() if served_by == model.kind]
            if not kinds:  # a ControlNet, depth estimator or IP-Adapter: priced in its generator's job
                assert not lines, item["id"]
                continue
            (kind,) = kinds
            assert list(lines) == [(kind, "any", "any")], item["id"]
            credits = lines[(kind, "any", "any")]["credits"]
            assert credits == price_quote(model=model, kind=kind, size="640x480", quality="", n=1) > 0
            continue
        # every kind x size x quality of the profile is priced for the seeded models
        assert len(lines) == len(profile.kinds) * len(profile.sizes) * len(profile.qualities), item["id"]
        for (kind, size, quality), line in lines.items():
            assert line["credits"] == price_quote(model=model, kind=kind, size=size, quality=quality, n=1)
            checked += 1
    assert checked > 50
    assert (
        _pricing(next(m for m in listing["data"] if m["id"] == "dall-e-3"))[("generate", "1792x1024", "hd")]["credits"]
        == 120
    )


def test_a_kind_specific_row_and_a_missing_price_show_as_they_are_charged(db, settings):
    settings.CREDIT_VALUE = "0.01"
    settings.CREDIT_CURRENCY = "eur"
    model = ImageModel.objects.create(public_id="m-priced", profile="dall-e-2", source="demo-sd-tiny")
    Price.objects.create(model=model, size="256x256", credits_per_image=3)
    Price.objects.create(model=model, kind="edit", size="256x256", credits_per_image=7)
    lines = model_price_list(
        model=model, kinds=("generate", "edit"), sizes=("256x256", "512x512"), qualities=("standard",)
    )
    assert [(line.kind, line.size, line.credits) for line in lines] == [
        ("generate", "256x256", 3),
        ("edit", "256x256", 7),
    ]
    assert lines[1].as_dict()["amount"] == "0.07" and lines[1].as_dict()["currency"] == "EUR"


def test_a_free_model_lists_zero_and_no_credit_value_lists_credits_only(db, settings):
    settings.CREDIT_VALUE = ""
    model = ImageModel.objects.create(public_id="m-free", profile="dall-e-2", source="demo-sd-tiny", is_free=True)
    (line,) = model_price_list(model=model, kinds=("generate",), sizes=("256x256",), qualities=("standard",))
    assert line.credits == 0
    assert line.as_dict()["amount"] is None and line.as_dict()["currency"] is None
    assert credits_money(5) is None


def test_credits_money_is_exact(settings):
    settings.CREDIT_VALUE = "0.001"
    settings.CREDIT_CURRENCY = "usd"
    assert credits_money(167) == (Decimal("0.167"), "usd")


@pytest.mark.parametrize(
    "minor, currency, locale, shown",
    [
        (1000, "usd", "en-us", "$10.00"),
        (1000, "USD", "en-us", "$10.00"),
        (1000, "eur", "de", "10,00\xa0€"),
        (500, "jpy", "en-us", "¥500"),
        (12345, "kwd", "en-us", "KWD12.345"),
        (5, "usd", "en-us", "$0.05"),
    ],
)
def test_money_format_uses_the_currency_and_locale(minor, currency, locale, shown):
    assert money_format(minor, currency, locale) == shown


def test_a_price_below_a_cent_keeps_its_digits():
    assert decimal_money_format(Decimal("0.016"), "usd", "en-us") == "$0.016"
