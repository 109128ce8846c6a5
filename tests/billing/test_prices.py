"""billing.services.price_quote: which row prices a request, fail-closed for unpriced
models, and integers all the way. Against the real database."""

from __future__ import annotations

import itertools

import pytest
from django.db import models as db_models

from billing.errors import PriceNotConfigured
from billing.models import CreditAccount, Hold, LedgerEntry, Price, UsageRecord
from billing.services import price_quote
from images.models import ImageModel, Job
from images.profiles import PROFILES
from images.tool_models import MODEL_KIND_OF_JOB
from tests.conftest import post_json

REQUEST = {"kind": "generate", "size": "512x512", "quality": "hd"}
# (kind named, size named, quality named) from the most to the least specific, the
# documented order: kind first, then size, then quality.
SPECIFICITY = sorted(itertools.product((True, False), repeat=3), reverse=True)


@pytest.fixture
def model(db) -> ImageModel:
    return ImageModel.objects.create(public_id="priced-model", profile="dall-e-2", source="demo-sd-tiny")


def price_row(model: ImageModel, named: tuple[bool, bool, bool], credits: int) -> Price:
    kind, size, quality = (value if on else "" for value, on in zip(REQUEST.values(), named, strict=True))
    return Price.objects.create(model=model, kind=kind, size=size, quality=quality, credits_per_image=credits)


def quote(model: ImageModel, n: int = 1, **request) -> int:
    return price_quote(model=model, n=n, **{**REQUEST, **request})


@pytest.mark.parametrize("created", ["least_specific_first", "most_specific_first"])
def test_each_row_loses_only_to_a_more_specific_one(model, created):
    # Distinct prices per specificity; creating the rows in both orders makes a rule that
    # ignores one dimension (a tie settled by row order) fail in one of the two.
    prices = {named: 100 + i for i, named in enumerate(SPECIFICITY)}
    for named in reversed(SPECIFICITY) if created == "least_specific_first" else SPECIFICITY:
        price_row(model, named, prices[named])
    for named in SPECIFICITY:  # remove the winner: the next most specific row wins
        assert quote(model) == prices[named], f"expected the {named} row to win"
        Price.objects.filter(model=model, credits_per_image=prices[named]).delete()
    with pytest.raises(PriceNotConfigured):
        quote(model)


def test_kind_outranks_size_and_quality_together(model):
    price_row(model, (False, True, True), 30)  # any kind, this size and quality
    price_row(model, (True, False, False), 70)  # this kind, any size and quality
    assert quote(model) == 70


@pytest.mark.parametrize("dimension, other", [("kind", "edit"), ("size", "1024x1024"), ("quality", "standard")])
def test_a_row_for_another_value_of_any_dimension_never_matches(model, dimension, other):
    Price.objects.create(model=model, credits_per_image=5)  # the catch-all
    Price.objects.create(model=model, credits_per_image=999, **{dimension: other})
    assert quote(model) == 5
    assert quote(model, **{dimension: other}) == 999


def test_another_models_rows_never_price_this_one(model):
    other = ImageModel.objects.create(public_id="other-model", profile="dall-e-2", source="demo-sd-tiny")
    Price.objects.create(model=other, credits_per_image=9)
    with pytest.raises(PriceNotConfigured):
        quote(model)


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_n_multiplies_the_price_of_one_image(model, n):
    price_row(model, (False, True, False), 18)
    result = quote(model, n=n)
    assert result == 18 * n and type(result) is int


@pytest.mark.parametrize("n", [2.0, 1.5, "2", True, 0, -1])
def test_n_must_be_a_positive_int(model, n):
    price_row(model, (False, False, False), 18)
    with pytest.raises(TypeError):
        quote(model, n=n)


def test_model_without_a_matching_row_is_refused_naming_it(model):
    price_row(model, (False, True, False), 18)  # 512x512 only
    with pytest.raises(PriceNotConfigured) as refused:
        quote(model, size="256x256")
    error = refused.value
    assert (error.status_code, error.code, error.param) == (400, "model_not_priced", "model")
    assert "'priced-model'" in error.message and "256x256" in error.message
    # Retrying cannot fix it: never a status the official SDKs retry.
    assert error.status_code not in (408, 409, 429) and error.status_code < 500


def test_model_marked_free_costs_nothing(model):
    model.is_free = True
    model.save(update_fields=["is_free"])
    assert quote(model, n=4) == 0


def test_model_marked_free_costs_nothing_even_with_rows(model):
    price_row(model, (False, False, False), 18)
    model.is_free = True
    model.save(update_fields=["is_free"])
    assert quote(model) == 0


def test_unpriced_model_is_refused_over_http_and_nothing_is_queued(api, parked, make_tenant):
    tenant = make_tenant(credits=4)
    ImageModel.objects.create(public_id="forgotten", profile="dall-e-2", source="demo-sd-tiny", queue="parked")
    response = post_json(
        api, "/v1/images/generations", {"model": "forgotten", "prompt": "a cat", "size": "256x256"}, tenant
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("model_not_priced", "model", "invalid_request_error")
    assert "forgotten" in error["message"]
    assert not Job.objects.filter(tenant=tenant.tenant).exists()
    assert not Hold.objects.filter(tenant=tenant.tenant).exists()
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (4, 0)
    assert list(LedgerEntry.objects.filter(tenant=tenant.tenant).values_list("kind", flat=True)) == ["grant"]


def test_seeded_models_price_every_size_and_quality_they_accept(registry):
    for model in ImageModel.objects.all():
        if model.kind != ImageModel.Kind.GENERATOR:  # a tool model: one price per image, any size
            kinds = [job for job, served_by in MODEL_KIND_OF_JOB.items() if served_by == model.kind]
            if not kinds:  # a ControlNet, depth estimator or IP-Adapter: priced in its generator's job
                assert not model.prices.exists(), model.public_id
                continue
            (kind,) = kinds
            credits = price_quote(model=model, kind=kind, size="640x480", quality="", n=1)
            assert type(credits) is int and credits > 0, model.public_id
            continue
        profile = PROFILES[model.profile]
        for kind in getattr(profile, "kinds", ("generate",)):
            for size, quality in itertools.product(profile.sizes, profile.qualities):
                credits = price_quote(model=model, kind=kind, size=size, quality=quality, n=1)
                assert type(credits) is int and credits > 0, (model.public_id, kind, size, quality)
    mini, full = (ImageModel.objects.get(public_id=p) for p in ("gpt-image-1-mini", "gpt-image-1"))
    assert quote(mini, size="1024x1024", quality="high") == 167 // 4
    assert quote(full, size="1024x1024", quality="high") == 167


@pytest.mark.parametrize("model_class", [Price, CreditAccount, LedgerEntry, Hold, UsageRecord])
def test_money_models_have_no_float_or_decimal_columns(model_class):
    inexact = [
        f.name for f in model_class._meta.get_fields() if isinstance(f, db_models.FloatField | db_models.DecimalField)
    ]
    assert inexact == []
    assert isinstance(Price._meta.get_field("credits_per_image"), db_models.BigIntegerField)
